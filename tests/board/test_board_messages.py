"""The board's words and errors in both languages, and the progress and outputs of its jobs.

Every i18n key has English and Chinese (with the same {fields}); every key the page or the board's
code uses exists; a CLI error line, produced here by the CLI itself, gets the Chinese explanation of
its kind and keeps its own line (which names the file, line or flag); a job's progress comes from
the partial file infer writes, its failure from the CLI's own error line."""

import json
import re
from pathlib import Path

import pytest

from instructglm.board import messages
from instructglm.board.i18n import TEXTS
from instructglm.board.jobs import Job, JobQueue
from instructglm.board.messages import BoardError, cli_error_line, explained, kind_of, payload
from instructglm.board.progress import failure, outputs, progress
from instructglm.errors import UserError

BOARD = Path(messages.__file__).parent
CJK = re.compile(r"[\u4e00-\u9fff]")


def test_every_key_has_both_languages_with_the_same_fields():
    en, zh = TEXTS["en"], TEXTS["zh"]
    shared = {k for k in zh if not k.startswith("help.")}  # help.*: Chinese help of options (English: the dataclass)
    assert set(en) == shared
    for key in en:
        assert en[key].strip() and zh[key].strip(), key
        assert set(re.findall(r"\{(\w+)\}", en[key])) == set(re.findall(r"\{(\w+)\}", zh[key])), key
    words = [k for k in en if k.startswith(("err.", "why.", "progress.", "eval.", "data.", "train."))]
    untranslated = [k for k in words if en[k] == zh[k] or not CJK.search(zh[k])]
    assert not untranslated, untranslated


def test_every_key_the_page_and_the_board_use_exists():
    page = (BOARD / "static" / "board.html").read_text() + "".join(
        p.read_text() for p in (BOARD / "static").glob("*.js"))
    used = set(re.findall(r'data-i18n="([\w.]+)"', page)) | set(re.findall(r'\bt\("([\w.]+)"', page))
    used |= {"err." + k for k in re.findall(r'boardError\("(\w+)"', page)}
    code = "".join(p.read_text() for p in BOARD.glob("*.py"))
    used |= {"err." + k for k in re.findall(r'BoardError\(\s*["\'](\w+)["\']', code)}
    used |= {"what." + k for k in re.findall(r'safe_name\([^()]*(?:\([^()]*\)[^()]*)*, "(\w+)"\)', code)}
    assert {k for k in used if k.startswith("what.")}, "the safe_name call sites were not found"
    missing = sorted(k for k in used if k not in TEXTS["en"] and not k.endswith("."))  # "status." + s: below
    assert not missing, missing
    from instructglm.board import jobs

    statuses = [jobs.WAITING, jobs.RUNNING, jobs.DONE, jobs.FAILED, jobs.STOPPED, jobs.LOST, jobs.ENDED_ELSEWHERE,
                "finished", "unknown"]  # a job's, and a run's (board/runs.py)
    assert all("status." + s in TEXTS["en"] for s in statuses)
    kinds = {kind for kind, _ in messages.KINDS} | {"other"}
    assert all("why." + k in TEXTS["en"] and "why." + k in TEXTS["zh"] for k in kinds)


def test_a_board_error_is_written_in_either_language():
    e = BoardError("bad_name", what="run", name="../x")
    assert str(e).startswith("run name '../x': use letters")
    assert isinstance(e, UserError) and payload(e) == {"error": str(e), "key": "bad_name",
                                                       "params": {"what": "run", "name": "../x"}}
    assert messages.render("bad_name", e.params, "zh").startswith("运行名称“../x”：")


def _cli_error(capsys, *argv) -> str:
    """The error line the CLI itself prints for ``instructglm ARGV``."""
    from instructglm.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    line = cli_error_line(capsys.readouterr().err)
    assert line is not None
    return line


def test_cli_errors_get_a_chinese_explanation_and_keep_their_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "reference": "b", "prediction": "b"}\n{bad json\n', encoding="utf-8")
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": 1}\n', encoding="utf-8")
    cases = [
        (("eval", str(tmp_path / "missing.jsonl")), "not_found", "missing.jsonl"),
        (("eval", str(bad)), "bad_json", f"{bad}:2"),
        (("convert", str(tmp_path), "-o", str(tmp_path / "o.jsonl")), "is_directory", str(tmp_path)),
        (("convert", str(odd), "-o", str(tmp_path / "o.jsonl")), "bad_record", "odd.jsonl"),
        (("train", "--dataset", "d", "--output-dir", "o", "--lora-rank", "eight"), "bad_value", "--lora-rank"),
        (("train", "--dataset", "d", "--output-dir", "o", "gradient_checkpoint=1"), "unknown_key",
         "gradient_checkpoint"),
    ]
    for argv, kind, named in cases:
        line = _cli_error(capsys, *argv)
        assert line.startswith(f"instructglm {argv[0]}: error: ") and named in line, line
        assert kind_of(line) == kind, line
        assert CJK.search(explained(kind, "zh")) and payload(UserError(line)) == {"error": line, "kind": kind}


def test_an_out_of_memory_line_is_explained():
    from instructglm.train import TrainConfig
    from instructglm.train.oom import out_of_memory_message

    message = out_of_memory_message(TrainConfig(dataset="d", output_dir="o"), 3,
                                    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert kind_of(f"instructglm train: error: {message}") == "out_of_memory"
    assert "显存" in explained("out_of_memory", "zh")
    assert kind_of("instructglm train: error: something nobody foresaw") == "other"


def test_a_cli_error_through_the_board_comes_with_its_kind(make_board, tmp_path):
    import httpx

    board, url = make_board()
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": 1}\n', encoding="utf-8")
    r = httpx.post(url + "/api/data/prepare", json={"source": str(odd)}, timeout=120)
    assert r.status_code == 400
    got = r.json()
    assert got["error"].startswith(f"instructglm convert: error: {odd}: cannot detect the dataset format")
    assert got["kind"] == "bad_record"


def _queue_with_job(tmp_path, job: Job, log: str) -> JobQueue:
    folder = tmp_path / "jobs" / job.id
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(job.__dict__))
    (folder / "log.txt").write_text(log)
    return JobQueue(tmp_path)


def test_progress_counts_the_rows_infer_has_written(tmp_path):
    out = tmp_path / "predictions.jsonl"
    job = Job("j1", "eval", [["infer", "--data", "d.jsonl", "-o", str(out)], ["eval", str(out)]], status="running",
              total=4, returncodes=[])
    assert progress(job)["fraction"] == 0 and progress(job)["done"] == 0
    Path(str(out) + ".partial").write_text('{"resume": {}}\n{"index": 0}\n{"index": 1}\n')
    got = progress(job)
    assert (got["stage"], got["stages"], got["done"], got["total"], got["fraction"]) == (1, 2, 2, 4, 0.25)
    job.returncodes = [0]  # infer done, eval runs
    assert progress(job)["stage"] == 2 and progress(job)["fraction"] == 0.5
    job.status, job.returncodes = "failed", [2]  # infer failed: its rows so far still count, nothing after it
    assert (progress(job)["stage"], progress(job)["fraction"]) == (1, 0.25)
    job.status, job.returncodes = "done", [0, 0]
    assert progress(job)["fraction"] == 1.0


def test_outputs_and_failures_of_a_job(tmp_path):
    target = tmp_path / "exports" / "r"
    (target / "merged").mkdir(parents=True)
    (target / "merged" / "model.safetensors").write_bytes(b"x" * 10)
    (target / "model.gguf").write_bytes(b"y" * 3)
    (target / "model.gguf.partial").write_bytes(b"z")
    assert [(Path(o["path"]).name, o["dir"], o["bytes"]) for o in outputs(str(target))] == [
        ("merged", True, 10), ("model.gguf", False, 3)]
    failed = Job("j1", "export", [["merge"], ["export"]], status="failed", returncodes=[0, 2])
    queue = _queue_with_job(tmp_path, failed, "$ instructglm merge\ninstructglm merge: error: an old one\n"
                            "$ instructglm export\nlog line\ninstructglm export: error: /x/m: file not found\n")
    assert failure(queue, queue.get("j1")) == {"error": "instructglm export: error: /x/m: file not found",
                                               "kind": "not_found"}
    crashed = Job("j2", "eval", [["infer"]], status="failed", returncodes=[-9])
    queue = _queue_with_job(tmp_path / "2", crashed, "$ instructglm infer\nKilled\n")
    got = failure(queue, queue.get("j2"))
    assert got["key"] == "job_crashed" and got["params"] == {"command": "instructglm infer", "code": "-9"}


@pytest.mark.parametrize("line, kind", [
    ("instructglm train: error: runs/a/checkpoint-4: the checkpoint's trained weights do not fit this run's model",
     "checkpoint"),
    ("instructglm train: error: cfg.yaml: config key 'lora_rank': expected int, got 'x' (line 3)", "bad_value"),
    ("instructglm tokenize: error: /d/x.jsonl:7: not UTF-8 text", "not_utf8"),
    ("instructglm convert: error: /dev/zero: not a regular file (a device, FIFO or socket); save the data to a "
     "file first", "not_regular"),
])
def test_kinds_of_other_cli_lines(line, kind):
    assert kind_of(line) == kind
