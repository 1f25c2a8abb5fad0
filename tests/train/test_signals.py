"""Stopping training early: SIGKILL while a checkpoint is being written, SIGTERM/SIGINT (finish the
step, save, stop, say how to resume), and out-of-memory turned into a UserError naming the knobs."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import instructglm.train.loss as loss_module
from instructglm.cli import main
from instructglm.config import load_config
from instructglm.constants import COMPLETE
from instructglm.errors import UserError
from instructglm.train import TrainConfig, train
from instructglm.train.checkpoint import complete_checkpoints as _checkpoints
from instructglm.train.identity import IDENTITY
from instructglm.train.lock import LOCK


@pytest.fixture(scope="module")
def dataset(tokenized):
    return tokenized("llama")


def _args(dataset, out, model, *extra):
    return ["train", "--dataset", str(dataset), "-o", str(out), "--model", model, "--lora-rank", "2",
            "--batch-size", "2", "--logging-steps", "1", "--learning-rate", "1e-3", *extra]


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "instructglm", "-q", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(predicate, proc, timeout=120.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.communicate()[1][-3000:]}")
        time.sleep(interval)
    proc.kill()
    raise AssertionError(f"timed out: {proc.communicate()[1][-3000:]}")


def _logged_steps(out: Path) -> list[int]:
    path = out / "trainer_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip().endswith("}")]


def _temp_dirs(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".checkpoint-")] if out.is_dir() else []


def _assert_loadable(ckpt: Path) -> int:
    """A complete checkpoint whose every file loads; returns its step."""
    from safetensors.torch import load_file

    assert (ckpt / COMPLETE).is_file()
    step = int(ckpt.name.split("-")[1])
    assert (ckpt / COMPLETE).read_text().strip() == str(step)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == step
    assert load_file(str(ckpt / "adapter_model.safetensors"))
    assert load_file(str(ckpt / "rng.safetensors"))["cpu"].dtype == torch.uint8
    assert torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    assert torch.load(ckpt / "scheduler.pt", weights_only=True)["last_epoch"] == step
    return step


def _resume(capsys, dataset, out, model, steps):
    code = main(["-q", *_args(dataset, out, model, "--resume", "latest", "--max-steps", str(steps))])
    err = capsys.readouterr().err
    assert code == 0, err
    assert _logged_steps(out) == list(range(1, steps + 1))  # the log continues exactly where the checkpoint was
    assert (out / "adapter_model.safetensors").is_file() and (out / "instructglm.json").is_file()


def test_sigkill_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, capsys, dataset, tiny_models):
    model, out = tiny_models("llama"), tmp_path / "run"
    proc = _start(_args(dataset, out, model, "--max-steps", "100000", "--save-steps", "1",
                        "--save-total-limit", "2"))
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    sightings = rng.randint(1, 4)  # kill during the Nth save seen in progress
    seen = []

    def saving_now():
        tmp = _temp_dirs(out)
        if tmp and _checkpoints(out):
            if not seen or seen[-1] != tmp:
                seen.append(tmp)
            return len(seen) >= sightings
        return False

    try:
        _wait_for(saving_now, proc, interval=0.0005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    found = _checkpoints(out)
    assert found, f"seed {seed}"
    latest = _assert_loadable(found[-1])  # the newest complete checkpoint is whole
    for ckpt in found:
        _assert_loadable(ckpt)
    # What the kill interrupted is a hidden temporary directory for the next step (if the save had not
    # finished in the instant between seeing it and the kill), never a checkpoint-N that resume would pick.
    for name in _temp_dirs(out):
        assert name.startswith(f".checkpoint-{latest + 1}.tmp-"), (name, latest, seed)
    assert all(p.name.startswith(".checkpoint-") or p.name.startswith("checkpoint-") or p.name in (
        "trainer_log.jsonl", "train_config.yaml", "runs", IDENTITY, LOCK) for p in out.iterdir()), \
        [p.name for p in out.iterdir()]
    _resume(capsys, dataset, out, model, latest + 2)


def test_sigterm_and_sigint_save_and_stop(tmp_path, capsys, dataset, tiny_models):
    """SIGTERM: exit 0 (a graceful pre-emption); SIGINT: exit 130. Both runs go at once to save time."""
    model = tiny_models("llama")
    runs = {sig: (tmp_path / signal.Signals(sig).name, code) for sig, code in ((signal.SIGTERM, 0), (signal.SIGINT, 130))}
    procs = {sig: _start(_args(dataset, out, model, "--max-steps", "100000")) for sig, (out, _) in runs.items()}
    try:
        for sig, proc in procs.items():
            _wait_for(lambda: len(_logged_steps(runs[sig][0])) >= 2, proc)
            proc.send_signal(sig)
        errs = {sig: proc.communicate(timeout=60)[1] for sig, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    for sig, (out, code) in runs.items():
        err = errs[sig]
        assert procs[sig].returncode == code, err
        assert "Traceback" not in err, err
        name = signal.Signals(sig).name
        assert f"stopped by {name} after step" in err and "--resume latest" in err, err
        found = _checkpoints(out)
        assert len(found) == 1 and _temp_dirs(out) == []
        step = _assert_loadable(found[0])
        assert f"checkpoint-{step}" in err
        assert _logged_steps(out) == list(range(1, step + 1))  # the step in progress was finished and logged
        assert not (out / "instructglm.json").exists()  # an interrupted run does not pose as a finished one
        _resume(capsys, dataset, out, model, step + 2)


def _cfg(dataset, out, model, **kw):
    base = dict(dataset=str(dataset), output_dir=str(out), model=model, lora_rank=2, per_device_train_batch_size=2,
                max_steps=50, logging_steps=1, learning_rate=1e-3)
    return load_config(TrainConfig, **{**base, **kw})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_in_process_signal_stops_after_the_step_and_restores_handlers(tmp_path, monkeypatch, dataset, tiny_models,
                                                                      sig):
    original = loss_module.batch_loss_sum
    calls = []

    def loss_then_signal(*a, **kw):
        calls.append(1)
        if len(calls) == 3:  # in the middle of step 3
            os.kill(os.getpid(), sig)
        return original(*a, **kw)

    monkeypatch.setattr(loss_module, "batch_loss_sum", loss_then_signal)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    out = tmp_path / "run"
    if sig == signal.SIGINT:
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(dataset, out, tiny_models("llama")))
    else:
        result = train(_cfg(dataset, out, tiny_models("llama")))
        assert result["interrupted"] == "SIGTERM" and result["steps"] == 3
    assert {s: signal.getsignal(s) for s in before} == before
    assert [p.name for p in _checkpoints(out)] == ["checkpoint-3"] and len(calls) == 3
    assert _logged_steps(out) == [1, 2, 3]


def test_handlers_restored_after_a_normal_run_and_an_error(tmp_path, monkeypatch, dataset, tiny_models):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    train(_cfg(dataset, tmp_path / "ok", tiny_models("llama"), max_steps=1))
    assert {s: signal.getsignal(s) for s in before} == before

    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loss_module, "batch_loss_sum", oom)
    with pytest.raises(UserError) as e:
        train(_cfg(dataset, tmp_path / "oom", tiny_models("llama"), pack_length=256))
    assert {s: signal.getsignal(s) for s in before} == before
    message = str(e.value)
    assert "\n" not in message and message.startswith("step 1: out of GPU memory (CUDA out of memory.")
    for knob in ("per_device_train_batch_size (now 2)", "gradient_accumulation_steps (now 1)", "--max-seq-length",
                 "pack_length (now 256)", "gradient_checkpointing=true", "load_in=4bit"):
        assert knob in message, knob


def test_out_of_memory_through_the_cli(tmp_path, capsys, monkeypatch, dataset, tiny_models):
    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(loss_module, "batch_loss_sum", oom)
    code = main(["-q", *_args(dataset, tmp_path / "run", tiny_models("llama"), "--max-steps", "3",
                              "--gradient-checkpointing")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [x for x in err.splitlines() if "error:" in x]
    assert len(errors) == 1 and "out of GPU memory" in errors[0] and "per_device_train_batch_size" in errors[0]
    assert "gradient_checkpointing=true" not in errors[0]  # already on: not suggested
