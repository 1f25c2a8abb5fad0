"""Two processes with torchrun (gloo, loopback) on a tiny model: same losses as one process with the
same effective batch, one writer, resumable with a different number of processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ALPACA_ROWS
from instructglm.config import load_config
from instructglm.data.convert import ConvertConfig, convert_files
from instructglm.data.tokenize import TokenizeConfig, tokenize_file
from instructglm.train.trainer import TrainConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("dist")
    (root / "a.json").write_text(json.dumps(ALPACA_ROWS * 4, ensure_ascii=False), encoding="utf-8")
    convert_files(ConvertConfig(inputs=[str(root / "a.json")], output=str(root / "a.jsonl")))
    tokenize_file(TokenizeConfig(input=str(root / "a.jsonl"), output=str(root / "tok"), model=tiny_models("llama")))
    return root / "tok"


def train(out, dataset, model, nproc, batch, *extra):
    args = ["-m", "instructglm", "-q", "train", "--dataset", str(dataset), "--model", model, "-o", str(out),
            "--max-steps", "4", "--logging-steps", "1", "--batch-size", str(batch), "--lora-dropout", "0",
            "--save-steps", "2", "--learning-rate", "5e-3", *extra]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()], proc


def test_two_processes_match_one_with_the_same_effective_batch(tmp_path, dataset, tiny_models):
    model = tiny_models("llama")
    one, _ = train(tmp_path / "one", dataset, model, 1, 4)
    two, proc = train(tmp_path / "two", dataset, model, 2, 2)
    assert "effective batch 4 = 2 per device x 1 accumulation x 2 process(es)" in proc.stderr
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # one writer: no duplicated lines
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint-*")) == ["checkpoint-2"]
    assert proc.stdout.count("trained 4 steps") == 1

    # resume the 2-process checkpoint in 1 process (different world size, same effective batch)
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "two" / "checkpoint-2", part / "checkpoint-2")
    resumed, _ = train(part, dataset, model, 1, 4, "--resume", "latest")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(one[2:], resumed[2:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import ClusterConfig

    data = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
    cfg = ClusterConfig(**data)  # accelerate's own schema: unknown keys raise
    assert cfg.distributed_type in ("MULTI_GPU", "FSDP", "DEEPSPEED")


@pytest.mark.parametrize("name", ["lora-gemma3-270m", "ptuning-chatglm"])
def test_shipped_train_configs_load(name):
    cfg = load_config(TrainConfig, ROOT / "configs" / f"{name}.yaml", ["dataset=d", "output_dir=o"])
    assert cfg.method in ("lora", "ptuning")
