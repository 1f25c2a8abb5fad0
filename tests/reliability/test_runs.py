"""Runs and their identity, through the real CLI on a tiny model: a resume continues only the run that
wrote its checkpoint, a new run never mixes with another run's checkpoints, one training per output
directory at a time, and ``--dry-run`` says what it did."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from instructglm.cli import main
from instructglm.train.checkpoint import complete_checkpoints
from instructglm.train.identity import IDENTITY
from instructglm.train.lock import LOCK
from sample_data import ALPACA_ROWS, tokenized_dataset

pytestmark = pytest.mark.slow


def _args(dataset, out, model, *extra):
    return ["-q", "train", "--dataset", str(dataset), "-o", str(out), "--model", model, "--lora-rank", "2",
            "--batch-size", "2", "--logging-steps", "1", "--learning-rate", "1e-3", "--seed", "5", *extra]


def _train(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _snapshot(folder):
    """Every file and when it changed (the lock file holds the pid of whoever locked last)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


@pytest.fixture()
def checkpointed(tmp_path, tokenized, tiny_models, capsys):
    """A run stopped at step 2 of 6 (as if interrupted): its output directory, model and dataset."""
    model, dataset, out = tiny_models("llama"), tokenized("llama"), tmp_path / "run"
    code, _, err = _train(capsys, *_args(dataset, out, model, "--max-steps", "3", "--save-steps", "2"))
    assert code == 0, err
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2"]
    return out, model, dataset


def test_resume_with_other_settings_is_refused_naming_them(checkpointed, tmp_path, capsys):
    out, model, dataset = checkpointed
    other = tokenized_dataset(tmp_path / "other", model, rows=ALPACA_ROWS * 2)
    before = _snapshot(out)
    for change, named in [(("--learning-rate", "2e-3"), "learning_rate (0.001 -> 0.002)"),
                          (("--batch-size", "3"), "effective batch (2 = 2 per device x 1 accumulation x 1 "
                                                  "process(es) -> 3 = 3 per device x 1 accumulation x 1 process(es))"),
                          (("--seed", "6"), "seed (5 -> 6)")]:
        code, _, err = _train(capsys, *_args(dataset, out, model, "--max-steps", "3", "--resume", "latest", *change))
        line = _one_line(err)
        assert code == 2 and named in line and "--resume-anyway" in line, line
    args = _args(dataset, out, model, "--max-steps", "3", "--resume", "latest")
    args[args.index(str(dataset))] = str(other)
    code, _, err = _train(capsys, *args)
    line = _one_line(err)
    assert code == 2 and f"dataset ({dataset.resolve()} -> {other.resolve()})" in line, line
    assert _snapshot(out) == before  # refusing touched nothing


def test_resume_anyway_continues_with_a_warning(checkpointed, capsys, caplog):
    out, model, dataset = checkpointed
    code, _, err = _train(capsys, *_args(dataset, out, model, "--max-steps", "4", "--resume", "latest",
                                         "--learning-rate", "2e-3", "--resume-anyway"))
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]  # (stderr outside pytest)
    assert any("--resume-anyway" in w and "learning_rate (0.001 -> 0.002)" in w for w in warned), warned
    assert any("another training length: max_steps (3 -> 4)" in w for w in warned), warned  # allowed, and said
    steps = [json.loads(x)["step"] for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert json.loads((out / IDENTITY).read_text())["config"]["learning_rate"] == 2e-3  # the run is now this one


def test_a_moved_dataset_is_the_same_run(checkpointed, tmp_path, capsys):
    out, model, dataset = checkpointed
    moved = tmp_path / "moved"
    shutil.copytree(dataset, moved)
    code, _, err = _train(capsys, *_args(moved, out, model, "--max-steps", "3", "--resume", "latest"))
    assert code == 0, err


def test_new_run_never_mixes_with_another_runs_checkpoints(checkpointed, capsys):
    """The reported case: a second run in the same directory, then --resume latest, resumed the old run."""
    out, model, dataset = checkpointed
    before = _snapshot(out)
    for extra in ([], ["--learning-rate", "5e-3"]):  # the same command again, or another run
        code, _, err = _train(capsys, *_args(dataset, out, model, "--max-steps", "3", *extra))
        line = _one_line(err)
        assert code == 2 and f"{out}: already holds checkpoints of a run (checkpoint-2)" in line, line
        assert "--resume latest" in line and "--output-dir" in line
    assert _snapshot(out) == before


def test_new_run_refuses_another_runs_finished_result(tmp_path, tokenized, tiny_models, capsys):
    model, dataset, out = tiny_models("llama"), tokenized("llama"), tmp_path / "done"
    assert _train(capsys, *_args(dataset, out, model, "--max-steps", "1"))[0] == 0
    before = _snapshot(out)
    code, _, err = _train(capsys, *_args(dataset, out, model, "--max-steps", "1", "--lora-rank", "4"))
    line = _one_line(err)
    assert code == 2 and "finished result of another run" in line and "lora_rank (2 -> 4)" in line, line
    assert _snapshot(out) == before
    # the same run again (only how often it logs differs) may write over its own result
    assert _train(capsys, *_args(dataset, out, model, "--max-steps", "1", "--logging-steps", "5"))[0] == 0


def test_resume_from_elsewhere_into_a_directory_with_other_checkpoints(checkpointed, tmp_path, capsys):
    out, model, dataset = checkpointed
    target = tmp_path / "target"
    shutil.copytree(out, target)
    code, _, err = _train(capsys, *_args(dataset, target, model, "--max-steps", "3", "--resume",
                                         str(out / "checkpoint-2")))
    line = _one_line(err)
    assert code == 2 and "already holds checkpoints of another run" in line, line


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "instructglm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_second_training_on_one_directory_fails_at_once(tmp_path, tokenized, tiny_models, capsys):
    model, dataset, out = tiny_models("llama"), tokenized("llama"), tmp_path / "busy"
    first = _start(_args(dataset, out, model, "--max-steps", "100000"))
    try:
        deadline = time.monotonic() + 180
        while not (out / "trainer_log.jsonl").is_file() or not (out / "trainer_log.jsonl").read_text().strip():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the first training did not start"
            time.sleep(0.1)
        logged = (out / "trainer_log.jsonl").read_text()
        code, _, err = _train(capsys, *_args(dataset, out, model, "--max-steps", "2"))
        line = _one_line(err)
        assert code == 2 and f"another training (pid {first.pid}) is writing to this directory" in line, line
        assert (out / "trainer_log.jsonl").read_text().startswith(logged)  # the second wrote nothing there
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: the kernel releases the lock
        first.communicate()
    code, _, err = _train(capsys, *_args(dataset, out, model, "--max-steps", "1"))
    assert code == 0, err  # no stale lock after a crash
    assert (out / LOCK).is_file()


def test_dry_run_says_what_it_did(tmp_path, tokenized, tiny_models, capsys):
    out = tmp_path / "o"
    code, stdout, err = _train(capsys, *_args(tokenized("llama"), out, tiny_models("llama"), "--dry-run"))
    assert code == 0, err
    assert "trained 0 steps" not in stdout and "adapter in" not in stdout
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("dry run:") and "nothing trained, nothing written" in last, last
    assert not out.exists()


def test_dry_run_checks_a_resume(checkpointed, capsys):
    out, model, dataset = checkpointed
    before = _snapshot(out)
    code, _, err = _train(capsys, *_args(dataset, out, model, "--max-steps", "3", "--resume", "latest",
                                         "--lora-alpha", "3", "--dry-run"))
    assert code == 2 and "lora_alpha" in _one_line(err)
    assert _snapshot(out) == before
