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
