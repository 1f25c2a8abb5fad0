"""``fuse_rms_norms`` (issue 23): one autograd node per transformers RMSNorm in low precision, with each
class's own formula; the class's own forward in fp32."""

import copy
import importlib

import pytest
import torch

from instructglm.train.norms import _KNOWN, fuse_rms_norms, known_formula

DIM = 64


def _norm_class(arch):
    name, _ = _KNOWN[arch]
    return getattr(importlib.import_module(f"transformers.models.{arch}.modeling_{arch}"), name)


def _pair(arch, dtype, trainable, seed=0):
    """(the module as transformers wrote it, a fused copy) with a random weight away from 0 and 1, so that
    ``w`` and ``1 + w`` (Gemma) or the order of cast and multiply (Llama) give different results."""
    torch.manual_seed(seed)
    own = _norm_class(arch)(DIM, eps=1e-6)
    with torch.no_grad():
        own.weight.copy_(torch.randn(DIM) * 0.5 + 0.3)
    own = own.to(dtype).requires_grad_(trainable)
    fused = copy.deepcopy(own)
    assert fuse_rms_norms(fused) == 1
    return own, fused


def _run(module, x, grad):
    """Output, input grad and weight grad (None when frozen) of ``module`` on ``x``."""
    x = x.detach().requires_grad_(True)
    y = module(x)
    y.backward(grad)
    weight_grad = None if module.weight.grad is None else module.weight.grad.clone()
    module.weight.grad = None
    return y, x.grad, weight_grad


def _inputs(dtype):
    torch.manual_seed(1)
    x = (torch.randn(3, 5, DIM) * 3).to(dtype)
    return x, torch.randn(3, 5, DIM).to(dtype)


def test_every_known_class_is_found():
    assert {formula for _, formula in _KNOWN.values()} == {"gemma", "llama"}
    for arch, (_, formula) in _KNOWN.items():  # each class exists in this transformers and is recognised
        assert known_formula(_norm_class(arch)(DIM)) == formula
    subclass = type("MyNorm", (_norm_class("llama"),), {})
    assert known_formula(subclass(DIM)) is None


@pytest.mark.parametrize("trainable", [False, True], ids=["frozen", "trainable"])
@pytest.mark.parametrize("arch", sorted(_KNOWN))
def test_bf16_matches_the_class_own_forward_and_backward(arch, trainable):
    own, fused = _pair(arch, torch.bfloat16, trainable)
    x, grad = _inputs(torch.bfloat16)
    # the grad is made to correlate with the output, so the backward's projection term (the rstd^3 part) is
    # large: a backward without it, like a forward with w for 1 + w, misses by far more than bf16 rounding
    grad = (grad.float() + own(x).detach().float()).to(torch.bfloat16)
    y_own, dx_own, dw_own = _run(own, x, grad)
    y, dx, dw = _run(fused, x, grad)
    assert y.grad_fn.name() == "_RMSNormFunctionBackward"
    assert y.dtype == y_own.dtype
    assert torch.equal(y, y_own)  # the same ops in the same order: the forward is bit for bit the class's
    torch.testing.assert_close(dx.float(), dx_own.float(), rtol=2 ** -6, atol=2e-2)
    if trainable:
        assert dw.dtype == dw_own.dtype
        torch.testing.assert_close(dw.float(), dw_own.float(), rtol=2 ** -6, atol=5e-2)
    else:
        assert dw is None and dw_own is None


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32], ids=["bf16_x", "fp32_x"])
@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_fp32_weight_under_autocast_is_fused_and_keeps_the_class_output_dtype(arch, x_dtype):
    """An fp32 base under autocast: the residual stream (x) is fp32 or bf16, the compute is low precision."""
    own, fused = _pair(arch, torch.float32, True)
    x, grad = _inputs(x_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_own, dx_own, dw_own = _run(own, x, grad)
        y, dx, dw = _run(fused, x, grad)
    assert y.grad_fn.name() == "_RMSNormFunctionBackward"
    assert (y.dtype, dx.dtype, dw.dtype) == (y_own.dtype, dx_own.dtype, dw_own.dtype)  # Llama's promotes to fp32
    assert torch.equal(y, y_own)
    torch.testing.assert_close(dx.float(), dx_own.float(), rtol=2 ** -6, atol=2e-2)
    torch.testing.assert_close(dw.float(), dw_own.float(), rtol=2 ** -6, atol=5e-2)


@pytest.mark.parametrize("arch", sorted(_KNOWN))
def test_fp32_runs_the_class_own_forward_bit_for_bit(arch):
    own, fused = _pair(arch, torch.float32, True)
    x, grad = _inputs(torch.float32)
    y_own, dx_own, dw_own = _run(own, x, grad)
    y, dx, dw = _run(fused, x, grad)
    assert y.grad_fn.name() != "_RMSNormFunctionBackward"
    assert torch.equal(y, y_own) and torch.equal(dx, dx_own) and torch.equal(dw, dw_own)


def test_a_deep_copy_computes_with_its_own_weight():
    _, fused = _pair("gemma3", torch.bfloat16, False)
    twin = copy.deepcopy(fused)
    with torch.no_grad():
        twin.weight.fill_(1.0)
    x, _ = _inputs(torch.bfloat16)
    assert not torch.equal(twin(x), fused(x))
    assert twin.forward.module is twin


def test_unknown_subclassed_and_already_patched_norms_are_left_alone():
    class MyNorm(_norm_class("llama")):
        def forward(self, x):
            return super().forward(x) * 2

    def patched(x):  # as Liger's kernels or an accelerate hook set it on the instance
        return x

    Llama = _norm_class("llama")
    model = torch.nn.Sequential(MyNorm(DIM), torch.nn.LayerNorm(DIM), Llama(DIM), Llama(DIM))
    model[3].forward = patched
    assert fuse_rms_norms(model) == 1
    assert "forward" not in vars(model[0]) and "forward" not in vars(model[1])
    assert model[3].forward is patched
    fused = vars(model[2])["forward"]
    assert fuse_rms_norms(model) == 1  # again: the same count, nothing wrapped twice
    assert vars(model[2])["forward"] is fused and fused.module is model[2]


def test_a_class_whose_maths_is_not_the_expected_formula_keeps_its_forward(monkeypatch, caplog):
    from instructglm.train import norms

    monkeypatch.setattr(norms, "_KNOWN", {"llama": ("LlamaRMSNorm", norms.GEMMA)})  # the wrong formula
    model = torch.nn.Sequential(_norm_class("llama")(DIM))
    assert fuse_rms_norms(model) == 0  # no Gemma-style eps attribute
    model[0].eps = 1e-6  # now only the maths tells them apart
    assert fuse_rms_norms(model) == 0
    assert "forward" not in vars(model[0])
    assert "LlamaRMSNorm does not compute the RMSNorm formula expected of it" in caplog.text


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "glm", "glm4"])
def test_a_tiny_model_under_bf16_autocast_gives_the_same_loss(arch, tiny_models):
    from transformers import AutoModelForCausalLM

    own = AutoModelForCausalLM.from_pretrained(tiny_models(arch), dtype=torch.bfloat16)
    fused = copy.deepcopy(own)
    norms = [m for m in fused.modules() if type(m).__name__.endswith("RMSNorm")]
    assert norms and fuse_rms_norms(fused) == len(norms)
    torch.manual_seed(0)
    ids = torch.randint(3, own.config.vocab_size, (2, 24))
    losses, grads = [], []
    for model in (own, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(model.get_input_embeddings().weight.grad.float())
    assert losses[1] == pytest.approx(losses[0], rel=2e-3)
    torch.testing.assert_close(grads[1], grads[0], rtol=0.05, atol=0.05 * grads[0].abs().max().item())
