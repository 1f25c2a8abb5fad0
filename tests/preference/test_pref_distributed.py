"""DPO under DDP: two processes give the losses and rewards of one with the same effective batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def run(out, dataset, model, nproc, batch, *extra):
    cmd = [sys.executable, "-m", "instructglm", "-q", "train", "--dataset", str(dataset), "--model", model,
           "-o", str(out), "--stage", "dpo", "--max-steps", "3", "--logging-steps", "1", "--batch-size", str(batch),
           "--lora-dropout", "0", "--learning-rate", "5e-3", "--shuffle", "false", *extra]
    cmd += ["--nproc", str(nproc)] if nproc > 1 else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_match_one(tmp_path, tiny_models, pair_dataset, method):
    model, data = tiny_models("llama"), pair_dataset("llama")
    one = run(tmp_path / "one", data, model, 1, 4, "--method", method)
    two = run(tmp_path / "two", data, model, 2, 2, "--method", method)
    for key in ("loss", "rewards_chosen", "rewards_rejected", "reward_accuracy", "logps_chosen"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("config,method,extra", [
    ("fsdp.yaml", "full", ()), ("fsdp.yaml", "lora", ()), ("deepspeed_zero2.yaml", "full", ()),
    ("deepspeed_zero3.yaml", "full", ("--precompute-ref",)), ("deepspeed_zero3.yaml", "lora", ())])
def test_sharded_engines_match_one_process(tmp_path, tiny_models, pair_dataset, config, method, extra):
    """The frozen reference copy (full) and the adapters-off reference (LoRA) under the sharded engines:
    the policy is sharded, the reference is not, and the losses and rewards are one process's."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    shim = "fsdp_on_cpu.py" if config == "fsdp.yaml" else "deepspeed_on_cpu.py"
    model, data = tiny_models("llama"), pair_dataset("llama")
    one = run(tmp_path / "one", data, model, 1, 4, "--method", method, *extra)
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "configs" / "accelerate" / config), "--num_processes", "2", "--mixed_precision", "no",
           str(root / "tests" / "helpers" / shim), "-q", "train", "--dataset", str(data), "--model", model,
           "-o", str(out), "--stage", "dpo", "--max-steps", "3", "--logging-steps", "1", "--batch-size", "2",
           "--lora-dropout", "0", "--learning-rate", "5e-3", "--shuffle", "false", "--method", method, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    for key in ("loss", "rewards_chosen", "rewards_rejected", "reward_accuracy", "logps_chosen"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-3, abs=1e-4), key


def test_a_frozen_reference_copy_under_zero3_is_refused_with_the_way_out(tmp_path, tiny_models, pair_dataset):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "configs" / "accelerate" / "deepspeed_zero3.yaml"), "--num_processes", "2",
           "--mixed_precision", "no", str(root / "tests" / "helpers" / "deepspeed_on_cpu.py"), "-q", "train",
           "--dataset", str(pair_dataset("llama")), "--model", tiny_models("llama"), "-o", str(tmp_path / "z3"),
           "--stage", "dpo", "--max-steps", "1", "--method", "full"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    assert "under DeepSpeed ZeRO-3: the frozen reference cannot be a copy of partitioned weights; " \
           "add --precompute-ref" in proc.stderr
