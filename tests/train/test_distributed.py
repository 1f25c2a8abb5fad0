"""Two processes on a tiny model over gloo on loopback, under each engine a user can launch:
DDP (torchrun, ``--nproc``), FSDP2 and DeepSpeed ZeRO-2/3 (``accelerate launch`` with the shipped
configs). Each must give the losses of one process with the same effective batch, write once, save
whole weights and resume: DDP/FSDP checkpoints with any number of processes and either engine,
DeepSpeed checkpoints under DeepSpeed with the same number (and a clear error otherwise)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sample_data import ALPACA_ROWS, tokenized_dataset
from instructglm.config import load_config
from instructglm.train import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_models):
    return tokenized_dataset(tmp_path_factory.mktemp("dist"), tiny_models("llama"), rows=ALPACA_ROWS * 4)


SHIMS = {"fsdp.yaml": "fsdp_on_cpu.py", "deepspeed_zero2.yaml": "deepspeed_on_cpu.py",
         "deepspeed_zero3.yaml": "deepspeed_on_cpu.py"}


def launch(out, dataset, model, nproc, batch, *extra, config=None, check=True):
    args = ["-q", "train", "--dataset", str(dataset), "--model", model, "-o", str(out),
            "--max-steps", "4", "--logging-steps", "1", "--batch-size", str(batch), "--lora-dropout", "0",
            "--save-steps", "2", "--learning-rate", "5e-3", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    if config:  # a shipped config, launched as users do; the test shim adapts the engine to CPU processes
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / config), "--num_processes", str(nproc),
               "--mixed_precision", "no", str(ROOT / "tests" / "helpers" / SHIMS[config]), *args]
    else:
        cmd = [sys.executable, "-m", "instructglm", *args] + (["--nproc", str(nproc)] if nproc > 1 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train(out, dataset, model, nproc, batch, *extra, config=None):
    proc = launch(out, dataset, model, nproc, batch, *extra, config=config)
    return [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()], proc


@pytest.fixture(scope="module")
def single(tmp_path_factory, dataset, tiny_models):
    """``method -> (log, output dir)`` of the one-process reference run (batch 4), run once per method."""
    runs = {}

    def get(method):
        if method not in runs:
            out = tmp_path_factory.mktemp(f"one-{method}")
            runs[method] = (train(out, dataset, tiny_models("llama"), 1, 4, "--method", method)[0], out)
        return runs[method]

    return get


def assert_same_weights(a_dir, b_dir, name):
    from safetensors.torch import load_file

    a, b = load_file(str(a_dir / name)), load_file(str(b_dir / name))
    assert sorted(a) == sorted(b)
    for k in a:  # whole tensors (gathered from the shards), equal to the single-process result
        assert b[k].shape == a[k].shape
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)


def resume_copy(src, dst):
    dst.mkdir()
    shutil.copytree(src / "checkpoint-2", dst / "checkpoint-2")
    return dst


def test_two_processes_match_one_with_the_same_effective_batch(tmp_path, dataset, tiny_models, single):
    model = tiny_models("llama")
    one, _ = single("lora")
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


WEIGHTS = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_two_processes_match_one_and_resume_across_engines(tmp_path, dataset, tiny_models, single, method):
    model = tiny_models("llama")
    one, one_dir = single(method)
    two, proc = train(tmp_path / "two", dataset, model, 2, 2, "--method", method, config="fsdp.yaml")
    assert "x 2 process(es), FSDP2" in proc.stderr
    assert "prepared parameter class: DTensor" in proc.stderr  # really sharded, not replicated
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)  # the norm over both shards
    assert_same_weights(one_dir, tmp_path / "two", WEIGHTS[method])

    # an FSDP checkpoint resumes in one process, and a one-process checkpoint resumes under FSDP
    for src, dst, nproc, batch, config in ((tmp_path / "two", "a", 1, 4, None), (one_dir, "b", 2, 2, "fsdp.yaml")):
        resumed, _ = train(resume_copy(src, tmp_path / dst), dataset, model, nproc, batch, "--method", method,
                           "--resume", "latest", config=config)
        for x, y in zip(one[2:], resumed[2:]):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-4), (src, dst)


@pytest.mark.parametrize("stage,method", [(2, "lora"), (3, "lora"), (3, "full")])
def test_deepspeed_two_processes_match_one_and_resume(tmp_path, dataset, tiny_models, single, stage, method):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the test extra: pip install -e '.[test]'")
    model, config = tiny_models("llama"), f"deepspeed_zero{stage}.yaml"
    one, one_dir = single(method)
    two, proc = train(tmp_path / "two", dataset, model, 2, 2, "--method", method, config=config)
    assert f"x 2 process(es), DeepSpeed ZeRO-{stage}" in proc.stderr
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)  # DeepSpeed's own norm
    assert_same_weights(one_dir, tmp_path / "two", WEIGHTS[method])

    # resumes under DeepSpeed with the same number of processes (ZeRO-3: weights from its fp32 master copy)
    resumed, _ = train(resume_copy(tmp_path / "two", tmp_path / "r"), dataset, model, 2, 2, "--method", method,
                       "--resume", "latest", config=config)
    for x, y in zip(one[2:], resumed[2:]):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
    if stage == 2:  # anything else is refused in one line, and the checkpoint is untouched
        proc = launch(resume_copy(tmp_path / "two", tmp_path / "x"), dataset, model, 1, 4, "--resume", "latest",
                      check=False)
        assert proc.returncode == 2
        assert "written under DeepSpeed; DeepSpeed keeps its own optimizer format" in proc.stderr
        assert (tmp_path / "x" / "checkpoint-2" / ".complete").is_file()


def test_gradient_accumulation_under_deepspeed_matches_one_process(tmp_path, dataset, tiny_models, single):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the test extra: pip install -e '.[test]'")
    one, _ = single("lora")  # batch 4 = 1 per device x 2 accumulation x 2 processes
    two, proc = train(tmp_path / "ga", dataset, tiny_models("llama"), 2, 1, "--gradient-accumulation-steps", "2",
                      config="deepspeed_zero2.yaml")
    assert "effective batch 4 = 1 per device x 2 accumulation x 2 process(es), DeepSpeed ZeRO-2" in proc.stderr
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_held_out_loss_under_sharded_engines_matches_one_process(tmp_path, dataset, tiny_models):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the test extra: pip install -e '.[test]'")
    model, extra = tiny_models("llama"), ("--val-size", "4", "--eval-steps", "2", "--save-steps", "0")
    evals = {}
    for name, nproc, batch, config in (("one", 1, 4, None), ("fsdp", 2, 2, "fsdp.yaml"),
                                       ("zero3", 2, 2, "deepspeed_zero3.yaml")):
        log, _ = train(tmp_path / name, dataset, model, nproc, batch, *extra, config=config)
        evals[name] = [r["eval_loss"] for r in log if "eval_loss" in r]
    assert len(evals["one"]) == 2  # steps 2 and 4, through the sharded forward on every process
    for name in ("fsdp", "zero3"):
        assert evals[name] == pytest.approx(evals["one"], rel=1e-5), name


def test_ptuning_under_fsdp_is_refused_with_a_reason(tmp_path, dataset, tiny_models):
    proc = launch(tmp_path / "p", dataset, tiny_models("llama"), 2, 2, "--method", "ptuning", config="fsdp.yaml",
                  check=False)
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
