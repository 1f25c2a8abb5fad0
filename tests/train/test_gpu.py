"""The GPU path: what only a CUDA device can check. Skipped where none is visible (CI, the 2-core
development machines); run on a GPU machine with ``bash scripts/gpu_check.sh`` (which also runs the
GPU benchmark), or ``pytest tests/test_gpu.py``.

* ``LinearCrossEntropy`` on CUDA in bf16 and fp32 against a float64 reference;
* packed rows on CUDA (SDPA with block-diagonal masks) give the loss and gradients of padded rows;
* ``instructglm train`` on CUDA in bf16 (precision auto) gives the losses of a CPU fp32 run within
  bf16 rounding, with and without Liger's kernels, and logs tokens/s, MFU and peak memory.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from sample_data import ALPACA_ROWS, tokenized_dataset
from test_packing import _examples

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("trainable_head", [False, True])
def test_linear_cross_entropy_on_cuda(dtype, tol, trainable_head):
    from instructglm.train.loss import LinearCrossEntropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(1000, 128, generator=g)
    w = torch.randn(32768, 128, generator=g) * 128 ** -0.5
    t = torch.randint(0, 32768, (1000,), generator=g)
    ref_h, ref_w = h.double().requires_grad_(), w.double().requires_grad_(trainable_head)
    ref = torch.nn.functional.cross_entropy(ref_h @ ref_w.t(), t, reduction="sum")
    ref.backward()
    cuda_h = h.to("cuda", dtype).requires_grad_()
    cuda_w = w.to("cuda", dtype).requires_grad_(trainable_head)
    out = LinearCrossEntropy.apply(cuda_h, cuda_w, None, t.cuda(), None, None, 512)
    out.backward()
    torch.cuda.synchronize()
    assert torch.isfinite(out) and abs(float(out.detach()) - float(ref.detach())) / abs(float(ref)) < tol
    assert cuda_h.grad.dtype == dtype and _rel(cuda_h.grad, ref_h.grad) < tol
    if trainable_head:
        assert cuda_w.grad.dtype == dtype and _rel(cuda_w.grad, ref_w.grad) < tol
    else:
        assert cuda_w.grad is None


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_packed_rows_on_cuda_equal_padded_rows(arch, tiny_models):
    from transformers import AutoModelForCausalLM

    from instructglm.train import methods
    from instructglm.train.packing import collate_packed
    from instructglm.train.data import collate
    from instructglm.train.loss import batch_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_models(arch), attn_implementation="sdpa").cuda()
    cols = _examples(model.config.vocab_size, [40, 9, 23, 17, 30])  # the CPU test's rows (test_packing.py)
    lora = methods.get_method("lora")
    results = []
    for batch in (collate(cols, 0), collate_packed(cols, 0, pack_length=64)):
        model.zero_grad()
        total, n = batch_loss_sum(model, lora, {k: v.cuda() for k, v in batch.items()})
        (total / n).backward()
        results.append((total.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (t1, g1), (t2, g2) = results
    assert _rel(t2, t1) < 1e-4
    for k in g1:
        assert _rel(g2[k], g1[k]) < 1e-3, k


def _train(tmp_path, model, name, *extra, cpu=False):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "instructglm", "train", "--dataset", str(tmp_path / "tok"),
                           "--model", model, "-o", str(out), "--max-steps", "4", "--logging-steps", "1",
                           "--batch-size", "4", "--lora-dropout", "0", "--learning-rate", "5e-3", "--no-shuffle",
                           *extra], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_bf16_training_on_cuda_matches_fp32_on_cpu(tmp_path, tiny_models, arch):
    model = tiny_models(arch)
    tokenized_dataset(tmp_path, model, rows=ALPACA_ROWS * 4)  # tmp_path / "tok", what _train reads
    cpu = _train(tmp_path, model, "cpu", cpu=True)
    runs = {"plain": _train(tmp_path, model, "gpu", "--liger", "off")}
    try:
        import liger_kernel  # noqa: F401

        runs["liger"] = _train(tmp_path, model, "gpu-liger", "--liger", "on")
    except ImportError:
        pass
    for name, log in runs.items():
        assert len(log) == len(cpu) == 4
        for a, b in zip(cpu, log):
            assert b["loss"] == pytest.approx(a["loss"], rel=3e-2), (name, a, b)
        assert all(0 <= r["mfu"] < 1 and r["peak_memory_gb"] > 0 and r["tokens_per_s"] > 0 for r in log), name
    assert "mfu" not in cpu[0]
