"""The fused LoRA linear (methods/lora/fused.py): in low precision it computes what PEFT computes (loss,
adapter and input gradients within bf16 rounding), its backward is exact (gradcheck in fp64), and in fp32
or on any layer it cannot fuse PEFT's own forward runs, bit for bit."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from instructglm.train.methods import LoraOptions, get_method
from instructglm.train.methods.lora import fused
from instructglm.train.methods.lora.fused import FusedLoraLinear, fuse_lora_layers

RANK, ALPHA = 4, 12.0  # scaling 3: a gradient missing the scaling is off by 3x, far outside any tolerance


def lora_model(path, dropout=0.0, dtype=torch.float32, **options):
    """A tiny model with LoRA on every linear layer, its adapters and biases random (PEFT zeroes B, which
    would leave A's gradient zero and untested; transformers zeroes biases)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = get_method("lora").apply(model, LoraOptions(rank=RANK, alpha=ALPHA, dropout=dropout, **options))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or name.endswith(".bias"):
                torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.fixture
def fused_calls(monkeypatch):
    """How many times the fused Function ran (so a test knows which path it compared)."""
    calls = []
    apply = FusedLoraLinear.apply

    def counting(*args):
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(FusedLoraLinear, "apply", counting)
    return calls


def step(model, autocast: bool, seed: int = 0):
    """(loss, output logits, {name: grad} of the LoRA weights and of the input embeddings) of one
    forward and backward on fixed tokens, fed as embeddings so their gradient checks grad_x."""
    torch.manual_seed(123)
    ids = torch.randint(3, 300, (2, 24))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    torch.manual_seed(seed)  # the dropout masks
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(inputs_embeds=embeds, labels=ids)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    grads["inputs_embeds"] = embeds.grad
    return out.loss.detach(), out.logits.detach(), grads


def close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    """Relative error of the whole tensor (norm of the difference over the norm) within ``rel``."""
    return float((a.float() - b.float()).norm() / b.float().norm()) < rel


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q/k/v have a (frozen) bias
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("base_dtype,autocast", [(torch.float32, True), (torch.bfloat16, True),
                                                 (torch.bfloat16, False)])
def test_fused_matches_peft_in_low_precision(arch, dropout, base_dtype, autocast, tiny_models, fused_calls):
    plain = lora_model(tiny_models(arch), dropout, base_dtype)
    model = copy.deepcopy(plain)
    n = fuse_lora_layers(model)
    assert n == 7 * 2  # q, k, v, o, gate, up, down in both layers
    loss, logits, grads = step(model, autocast)
    assert len(fused_calls) == n  # every layer took the fused path
    ref_loss, ref_logits, ref_grads = step(plain, autocast)
    assert len(fused_calls) == n  # and the copy did not

    assert logits.dtype == ref_logits.dtype
    assert float(loss) == pytest.approx(float(ref_loss), rel=3e-3)
    assert close(logits, ref_logits, 3e-2)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * n + 1  # A and B of each layer, the input
    for name, g in grads.items():
        assert g.dtype == ref_grads[name].dtype, name  # fp32 master adapters get fp32 gradients
        assert close(g, ref_grads[name], 8e-2), name


def test_backward_is_exact_in_fp64():
    """The Function's own gradients against finite differences: x feeding both paths, and x with a
    separate (dropped-out) LoRA input; a frozen bias; leading dimensions of any rank."""
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(2, 3, 5, **f64, requires_grad=True)
    xd = torch.randn(2, 3, 5, **f64, requires_grad=True)
    w, bias = torch.randn(6, 5, **f64), torch.randn(6, **f64)
    a = torch.randn(2, 5, **f64, requires_grad=True)
    b = torch.randn(6, 2, **f64, requires_grad=True)
    for second in (None, xd):
        assert torch.autograd.gradcheck(
            lambda x, xd, a, b: FusedLoraLinear.apply(x, xd, w, bias, a, b, 2.5, torch.float64),
            (x, second, a, b))
    y = FusedLoraLinear.apply(x, None, w, bias, a, b, 2.5, torch.float64)
    assert torch.allclose(y, x @ w.T + bias + 2.5 * (x @ a.T) @ b.T)


def test_fp32_keeps_peft_path_bit_for_bit(tiny_models, fused_calls):
    plain = lora_model(tiny_models("llama"), dropout=0.3)
    model = copy.deepcopy(plain)
    assert fuse_lora_layers(model) > 0
    loss, logits, grads = step(model, autocast=False)
    ref_loss, ref_logits, ref_grads = step(plain, autocast=False)
    assert not fused_calls
    assert torch.equal(loss, ref_loss) and torch.equal(logits, ref_logits)
    assert all(torch.equal(g, ref_grads[name]) for name, g in grads.items())


def _dora(path):
    return lora_model(path, dora=True)


def _merged(path):
    model = lora_model(path)
    model.merge_adapter()
    return model


def _two_adapters(path):
    from peft import LoraConfig

    model = lora_model(path)
    model.add_adapter("second", LoraConfig(r=2, target_modules="all-linear"))
    model.base_model.set_adapter(["default", "second"])
    return model


@pytest.mark.parametrize("build", [_dora, _merged, _two_adapters, "disabled"])
def test_ineligible_layers_take_peft_path(build, tiny_models, fused_calls):
    plain = (lora_model if build == "disabled" else build)(tiny_models("llama"))
    model = copy.deepcopy(plain)
    fuse_lora_layers(model)
    outputs = []
    for m in (model, plain):
        torch.manual_seed(0)
        ids = torch.randint(3, 300, (2, 16))
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            if build == "disabled":
                with m.disable_adapter():
                    outputs.append(m(input_ids=ids).logits)
            else:
                outputs.append(m(input_ids=ids).logits)
    assert not fused_calls
    assert torch.equal(outputs[0], outputs[1])


def test_a_trained_base_bias_takes_peft_path(tiny_models, fused_calls):
    """Qwen2's q/k/v have a bias; trained, those three layers are left to PEFT, the others fuse."""
    model = lora_model(tiny_models("qwen2"))
    for name, p in model.named_parameters():
        if "base_layer.bias" in name:
            p.requires_grad_(True)
    assert fuse_lora_layers(model) == 14
    step(model, autocast=True)
    assert len(fused_calls) == 14 - 3 * 2


def test_fuse_is_idempotent_and_deepcopy_keeps_its_own_layer(tiny_models):
    model = lora_model(tiny_models("llama"))
    n = fuse_lora_layers(model)
    assert fuse_lora_layers(model) == n
    twin = copy.deepcopy(model)
    layer = next(m for m in twin.modules() if isinstance(m.__dict__.get("forward"), fused._FusedForward))
    assert layer.forward.layer is layer
