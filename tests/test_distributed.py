"""Two processes with torchrun (gloo, loopback) on a tiny model: same losses as one process with the
same effective batch, one writer, resumable with a different number of processes; the same under
FSDP2 (parameters sharded across the two processes), for LoRA and for full fine-tuning."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


def launch(out, dataset, model, nproc, batch, *extra, fsdp=False, check=True):
    args = ["-q", "train", "--dataset", str(dataset), "--model", model, "-o", str(out),
            "--max-steps", "4", "--logging-steps", "1", "--batch-size", str(batch), "--lora-dropout", "0",
            "--save-steps", "2", "--learning-rate", "5e-3", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    if fsdp:  # the shipped config, as users launch it; fsdp_on_cpu.py lets accelerate shard CPU processes
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", str(nproc),
               "--mixed_precision", "no", str(ROOT / "tests" / "fsdp_on_cpu.py"), *args]
    else:
        cmd = [sys.executable, "-m", "instructglm", *args] + (["--nproc", str(nproc)] if nproc > 1 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train(out, dataset, model, nproc, batch, *extra, fsdp=False):
    proc = launch(out, dataset, model, nproc, batch, *extra, fsdp=fsdp)
    return [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()], proc


def test_two_processes_match_one_with_the_same_effective_batch(tmp_path, dataset, tiny_models):
    model = tiny_models("llama")
    one, _ = train(tmp_path / "one", dataset, model, 1, 4)
    two, proc = train(tmp_path / "two", dataset, model, 2, 2)
    assert "effective batch 4 = 2 per device x 1 accumulation x 2 process(es), DDP" in proc.stderr
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


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_two_processes_match_one_and_resume_across_engines(tmp_path, dataset, tiny_models, method):
    from safetensors.torch import load_file

    model = tiny_models("llama")
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    one, _ = train(tmp_path / "one", dataset, model, 1, 4, "--method", method)
    two, proc = train(tmp_path / "two", dataset, model, 2, 2, "--method", method, fsdp=True)
    assert "x 2 process(es), FSDP2" in proc.stderr
    assert "prepared parameter class: DTensor" in proc.stderr  # really sharded, not replicated
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)  # the norm over both shards
    # the saved weights are whole tensors (gathered), equal to the single-process result
    a, b = load_file(str(tmp_path / "one" / weights)), load_file(str(tmp_path / "two" / weights))
    assert sorted(a) == sorted(b)
    for k in a:
        assert b[k].shape == a[k].shape
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)

    # an FSDP checkpoint resumes in one process, and a one-process checkpoint resumes under FSDP
    for src, dst, nproc, batch, fsdp in (("two", "a", 1, 4, False), ("one", "b", 2, 2, True)):
        (tmp_path / dst).mkdir()
        shutil.copytree(tmp_path / src / "checkpoint-2", tmp_path / dst / "checkpoint-2")
        resumed, _ = train(tmp_path / dst, dataset, model, nproc, batch, "--method", method, "--resume", "latest",
                           fsdp=fsdp)
        for x, y in zip(one[2:], resumed[2:]):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-4), (src, dst)


def test_ptuning_under_fsdp_is_refused_with_a_reason(tmp_path, dataset, tiny_models):
    proc = launch(tmp_path / "p", dataset, tiny_models("llama"), 2, 2, "--method", "ptuning", fsdp=True, check=False)
    assert proc.returncode != 0
    assert "method ptuning does not run under FSDP" in proc.stderr
    assert not (tmp_path / "p" / "adapter_model.safetensors").exists()


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
