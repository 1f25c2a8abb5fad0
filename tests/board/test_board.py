"""The board without a browser: the Train form is the CLI's options, the command it shows is what the
CLI reads, its launch path writes the same train_config.yaml as the CLI, the token guard, job
re-attachment, and the Data page's parsing of what convert and tokenize print."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from instructglm.board import forms
from instructglm.board.data import marked_segments, prepare
from instructglm.board.jobs import JobQueue
from instructglm.config import options, to_yaml
from instructglm.errors import UserError
from instructglm.train import TrainConfig


def test_form_has_every_option_with_help_and_default():
    groups = forms.form_schema(TrainConfig)
    fields = {f["key"]: f for g in groups for f in g["fields"]}
    assert sorted(fields) == sorted(options(TrainConfig))  # every option (the top-level ones in "general")
    order = list(options(TrainConfig))
    assert all([order.index(f["key"]) for f in g["fields"]] == sorted(order.index(f["key"]) for f in g["fields"])
               for g in groups)  # in train_config.yaml's order within each group
    assert [g["name"] for g in groups][:2] == ["general", "lora"]
    assert all(f["help"] for f in fields.values())
    assert fields["lora_rank"]["default"] == TrainConfig(dataset="d", output_dir="o").lora.rank
    assert fields["method"]["kind"] == "choice" and "ptuning" in fields["method"]["choices"]
    assert fields["packing"]["kind"] == "bool" and fields["dataset"]["required"]


def test_every_train_option_has_chinese_help():
    """The language switch covers the whole form: an option added to TrainConfig without a Chinese help
    text fails here rather than showing English on the Chinese page."""
    from instructglm.board.i18n import HELP_ZH

    missing = [key for key in options(TrainConfig) if not HELP_ZH.get(key)]
    assert not missing, f"add Chinese help for {missing} to board/i18n.py HELP_ZH"


def test_command_is_what_the_cli_reads():
    values = {"dataset": "tok", "output_dir": "out", "lora_rank": "16", "learning_rate": "5e-5", "packing": False,
              "max_steps": "7", "method": "lora", "seed": "42", "lr_scheduler": "linear", "eval_dataset": ""}
    shown = forms.preview(TrainConfig, values)
    # only what differs from the defaults, spelled as flags
    assert shown["args"] == ["--dataset", "tok", "--output-dir", "out", "--lora-rank", "16", "--learning-rate",
                             "5e-05", "--lr-scheduler", "linear", "--max-steps", "7", "--no-packing"]
    assert shown["command"].startswith("instructglm train --dataset tok ")
    from instructglm.cli import _train_config, build_parser

    cfg = _train_config(build_parser().parse_args(["train", *shown["args"]]), TrainConfig)
    assert cfg.lora.rank == 16 and cfg.optimizer.learning_rate == 5e-5 and cfg.performance.packing is False
    assert shown["yaml"] == to_yaml(cfg)


@pytest.mark.parametrize("values, words", [
    ({"dataset": "t", "output_dir": "o", "lora_rank": "eight"}, "lora_rank"),
    ({"dataset": "t", "output_dir": "o", "nonsense": "1"}, "nonsense"),
    ({"dataset": "", "output_dir": "o"}, "--dataset"),
    ({"dataset": "t", "output_dir": "o", "learning_rate": "-1"}, "learning_rate"),
])
def test_form_errors_name_the_option(values, words):
    with pytest.raises(UserError, match=words):
        forms.preview(TrainConfig, values)


def test_presets_are_the_shipped_configs():
    found = forms.presets(Path(__file__).parents[2] / "configs")
    assert "lora-gemma3-270m" in found and found["lora-gemma3-270m"]["method"] == "lora"


def test_marked_segments():
    assert marked_segments("a [[b\nc]] d[[e]]") == [
        {"text": "a ", "trained": False}, {"text": "b\nc", "trained": True}, {"text": " d", "trained": False},
        {"text": "e", "trained": True}]


def test_data_page_reads_what_the_cli_wrote(tmp_path, tiny_models):
    src = tmp_path / "mixed.jsonl"
    rows = [{"instruction": "Who are you?", "input": "", "output": "I am a tiny model."}] * 3
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, '{"instruction": 5, "output": "x"}')
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    got = prepare(tmp_path / "work", str(src), "", tiny_models("llama"), "alpaca", 128, show=2)
    assert got["format"] == "alpaca" and got["counts"]["records"] == 3 and got["counts"]["rejected"] == 1
    assert got["rejects"] == [{"where": f"{src}:2", "reason": got["rejects"][0]["reason"]}]
    assert [s["text"] for s in got["examples"][0]["segments"] if s["trained"]] == ["I am a tiny model.<eos>"]
    assert sum(got["histogram"]["counts"]) == 3 and got["histogram"]["edges"][0] == got["stats"]["length_after"]["min"]
    assert got["commands"][0].startswith("instructglm convert ") and Path(got["dataset"], "manifest.json").exists()
    with pytest.raises(UserError, match="no such file"):
        prepare(tmp_path / "work", str(tmp_path / "missing.json"), "", "m", "alpaca", 128)


def test_token_is_required_off_loopback(make_board):
    import httpx

    board, url = make_board(host="0.0.0.0", auth_token="s3cret-token")
    assert httpx.get(url + "/api/state").status_code == 401
    assert httpx.get(url + "/api/state", headers={"X-Board-Token": "s3cret-tokex"}).status_code == 401
    assert httpx.get(url + "/api/state", headers={"X-Board-Token": "s3cret-token"}).status_code == 200
    with httpx.Client() as client:  # the printed address sets a cookie; the page's own requests then pass
        assert client.get(url + "/?token=s3cret-token").status_code == 200
        assert client.get(url + "/api/state").status_code == 200
    generated, _ = make_board(host="0.0.0.0", workdir=str(board.workdir) + "2")
    local, _ = make_board()
    assert generated.token and len(generated.token) >= 16 and local.token is None


def test_errors_come_back_as_one_line(make_board):
    import httpx

    board, url = make_board()
    r = httpx.post(url + "/api/train/launch", json={"values": {"dataset": "t", "output_dir": "/elsewhere/x"}})
    assert r.status_code == 400 and "runs/NAME" in r.json()["error"]
    r = httpx.post(url + "/api/data/prepare", json={"source": "/no/such.json"})
    assert r.status_code == 400 and r.json() == {"error": "/no/such.json: no such file", "key": "no_such_file",
                                                 "params": {"path": "/no/such.json"}}
    r = httpx.post(url + "/api/data/upload?name=../../x.json", content=b"[]")  # kept inside the work directory
    assert r.status_code == 200 and r.json()["path"] == str(board.workdir / "uploads" / "x.json")
    r = httpx.post(url + "/api/data/upload?name=.profile", content=b"[]")
    assert r.status_code == 400 and "file name" in r.json()["error"]


def test_jobs_reattach_and_stop(tmp_path):
    """A board started again finds a job still running (not its child) and can stop it with SIGTERM."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "jobs" / "j1"
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps({"id": "j1", "kind": "train", "commands": [["train"]],
                                                     "status": "running", "pid": sleeper.pid, "target": "x"}))
        queue = JobQueue(tmp_path)
        assert [j["status"] for j in queue.listing()] == ["running"]
        queue.stop("j1")
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
        deadline = time.time() + 5
        while queue.get("j1").status == "running" and time.time() < deadline:  # as the Train page asks
            time.sleep(0.1)
        assert queue.latest("train", "x").status == "ended" and queue.listing()[0]["status"] == "ended"
        again = JobQueue(tmp_path)
        assert again.get("j1").status == "ended"
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


@pytest.mark.slow
def test_launch_path_writes_the_same_train_config_as_the_cli(make_board, tokenized, tiny_models):
    import httpx

    board, url = make_board()
    dataset, model = str(tokenized("llama")), tiny_models("llama")
    values = {"dataset": dataset, "output_dir": str(board.workdir / "runs" / "via-board"), "model": model,
              "max_steps": "1", "lora_rank": "4", "lora_alpha": "8", "learning_rate": "0.0003",
              "per_device_train_batch_size": "2", "packing": False, "seed": "7", "logging_steps": "1"}
    r = httpx.post(url + "/api/train/launch", json={"values": values}, timeout=60)
    assert r.status_code == 200, r.text
    job_id = r.json()["job"]["id"]
    by_hand = board.workdir / "by-hand"
    cli = subprocess.run([sys.executable, "-m", "instructglm", "train", "--dataset", dataset, "--output-dir",
                          str(by_hand), "--model", model, "--max-steps", "1", "--lora-rank", "4", "--lora-alpha", "8",
                          "--learning-rate", "3e-4", "--batch-size", "2", "--no-packing", "--seed", "7",
                          "--logging-steps", "1"], capture_output=True, text=True, env=os.environ, timeout=300)
    assert cli.returncode == 0, cli.stderr
    deadline = time.time() + 300
    while board.jobs.get(job_id).status in ("waiting", "running"):
        assert time.time() < deadline
        time.sleep(0.2)
    assert board.jobs.get(job_id).status == "done", board.jobs.log_tail(job_id)
    mine = yaml.safe_load((board.workdir / "runs" / "via-board" / "train_config.yaml").read_text())
    theirs = yaml.safe_load((by_hand / "train_config.yaml").read_text())
    assert mine.pop("output_dir") != theirs.pop("output_dir")
    assert mine == theirs
    assert mine["lora_rank"] == 4 and mine["packing"] is False and mine["seed"] == 7
