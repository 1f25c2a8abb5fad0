"""``precision auto`` on a CPU: bf16 compute where the CPU has native bf16 matrix instructions and the
model is wide enough, fp32 otherwise; trainable weights and optimizer state stay fp32 either way."""

import logging

import pytest
import torch

from instructglm.config import load_config
from instructglm.train import TrainConfig, train
from instructglm.train import model as train_model


def _cfg(dataset, out, model, **kw):
    base = dict(dataset=str(dataset), output_dir=str(out), model=model, lora_rank=4, lora_dropout=0.0,
                per_device_train_batch_size=2, max_steps=3, logging_steps=1, learning_rate=1e-2, seed=3)
    base.update(kw)
    return load_config(TrainConfig, **base)


@pytest.fixture()
def native_bf16(monkeypatch):
    """Pretend this CPU has avx512_bf16 and let the tiny test models count as wide enough."""
    monkeypatch.setattr(train_model, "cpu_bf16_instructions", lambda: "avx512_bf16")
    monkeypatch.setattr(train_model, "BF16_MIN_HIDDEN", 16)


def test_auto_on_cpu_defers_to_the_model_and_explicit_choices_do_not():
    if torch.cuda.is_available():
        pytest.skip("the CPU rule")
    assert train_model.resolve_precision("auto") == (None, "no")
    assert train_model.resolve_precision("bf16") == (torch.bfloat16, "bf16")
    assert train_model.resolve_precision("fp32") == (torch.float32, "no")


@pytest.mark.parametrize("native,hidden,expected", [("avx512_bf16", 640, torch.bfloat16),
                                                    ("amx_bf16, avx512_bf16", 576, torch.bfloat16),
                                                    (None, 640, torch.float32),
                                                    ("avx512_bf16", 64, torch.float32)])
def test_auto_cpu_dtype_rule_and_log(monkeypatch, caplog, native, hidden, expected):
    monkeypatch.setattr(train_model, "cpu_bf16_instructions", lambda: native)
    with caplog.at_level(logging.INFO, logger="instructglm.train.model"):
        assert train_model.auto_cpu_dtype("unused", hidden_size=hidden) == expected
    said = caplog.text
    assert ("precision auto: bf16" in said) == (expected == torch.bfloat16)
    if native is None:
        assert "no native bf16" in said
    elif expected == torch.float32:
        assert "too small" in said


def test_the_cpu_probe_names_only_bf16_matrix_instructions():
    found = train_model.cpu_bf16_instructions()
    assert found is None or set(found.split(", ")) <= {"amx_bf16", "avx512_bf16"}


def test_auto_trains_in_bf16_with_fp32_trainable_weights(tmp_path, tokenized, tiny_models, native_bf16,
                                                         monkeypatch, caplog):
    dataset, model = tokenized("llama"), tiny_models("llama")
    fp32 = [r["loss"] for r in train(_cfg(dataset, tmp_path / "fp32", model, precision="fp32"))["logs"]]

    seen = {}
    real_step = torch.optim.AdamW.step

    def spy_step(self, *a, **k):  # the optimizer sees fp32 weights and gradients, and keeps fp32 state
        out = real_step(self, *a, **k)
        params = [p for group in self.param_groups for p in group["params"]]
        seen["params"] = {p.dtype for p in params}
        seen["grads"] = {p.grad.dtype for p in params if p.grad is not None}
        seen["state"] = {v.dtype for s in self.state.values() for v in s.values() if v.dim()}
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", spy_step)
    real_load = train_model.load_base

    def spy_load(*a, **k):
        base = real_load(*a, **k)
        seen["base"] = {p.dtype for p in base.parameters()}
        return base

    monkeypatch.setattr(train_model, "load_base", spy_load)
    from instructglm.train import attention, norms
    from instructglm.train.methods.lora import fused

    calls = {"lora": 0, "norm": 0, "attention": 0}  # the bf16 step: fused LoRA layers and norms, packed attention
    for key, fn in (("lora", fused.FusedLoraLinear), ("norm", norms._RMSNormFunction),
                    ("attention", attention.PackedCausalAttention)):
        def counted(*a, _key=key, _apply=fn.apply):
            calls[_key] += 1
            return _apply(*a)
        monkeypatch.setattr(fn, "apply", counted)
    with caplog.at_level(logging.INFO, logger="instructglm.train.model"):
        auto = [r["loss"] for r in train(_cfg(dataset, tmp_path / "auto", model))["logs"]]
    assert calls["lora"] > 0 and calls["norm"] > 0 and calls["attention"] > 0, calls
    assert "precision auto: bf16 compute (this CPU has avx512_bf16)" in caplog.text
    assert "trainable weights and optimizer state fp32" in caplog.text
    assert seen["base"] == {torch.bfloat16}
    assert seen["params"] == seen["grads"] == seen["state"] == {torch.float32}
    # bf16 compute: close to fp32 (bf16 noise) but not the fp32 numbers themselves
    assert auto == pytest.approx(fp32, rel=3e-2)
    assert auto != pytest.approx(fp32, rel=1e-6)


def test_auto_stays_fp32_for_small_models_on_the_same_cpu(tmp_path, tokenized, tiny_models, monkeypatch):
    monkeypatch.setattr(train_model, "cpu_bf16_instructions", lambda: "avx512_bf16")  # hidden 64 < 512
    dataset, model = tokenized("llama"), tiny_models("llama")
    fp32 = [r["loss"] for r in train(_cfg(dataset, tmp_path / "fp32", model, precision="fp32"))["logs"]]
    auto = [r["loss"] for r in train(_cfg(dataset, tmp_path / "auto", model))["logs"]]
    assert auto == fp32


def test_lora_inputs_are_not_cast_to_fp32_under_autocast(tiny_models, tokenized):
    """Under bf16 autocast PEFT's cast of the input to the adapter's fp32 is skipped (autocast casts it
    straight back), with bit-identical loss and gradients."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear
    from transformers import AutoModelForCausalLM

    from instructglm.train.loss import batch_loss_sum
    from instructglm.train.methods import get_method

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_models("llama"), dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, base.config.vocab_size, (2, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    lora = next(m for m in model.modules() if isinstance(m, LoraLinear))
    seen = []
    lora.register_forward_pre_hook(lambda m, a: seen.append((m.cast_input_dtype_enabled, a[0].dtype)))
    method = get_method("lora")

    def run(ours: bool):
        model.zero_grad()
        if ours:
            setattr(base, train_model.AUTOCAST_ATTR, torch.bfloat16)
            loss, n = batch_loss_sum(model, method, batch)
            delattr(base, train_model.AUTOCAST_ATTR)
        else:  # what accelerate's autocast alone did: PEFT casts every adapted input to fp32
            with torch.autocast("cpu", dtype=torch.bfloat16):
                from instructglm.train.loss import _batch_loss_sum
                loss, n = _batch_loss_sum(model, method, batch)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain_grads = run(False)
    assert seen[-1] == (True, torch.bfloat16)
    loss, grads = run(True)
    assert seen[-1] == (False, torch.bfloat16)
    assert lora.cast_input_dtype_enabled  # restored after the forward
    assert torch.equal(loss, plain_loss)
    for k in grads:
        assert torch.equal(grads[k], plain_grads[k]), k


def test_load_model_auto_for_generation(tiny_models, monkeypatch):
    from instructglm.models.loading import load_model

    monkeypatch.setattr(train_model, "cpu_bf16_instructions", lambda: "avx512_bf16")
    assert next(load_model(tiny_models("llama"), dtype="auto").parameters()).dtype == torch.float32  # 64 wide
    monkeypatch.setattr(train_model, "BF16_MIN_HIDDEN", 16)
    if not torch.cuda.is_available():
        assert next(load_model(tiny_models("llama"), dtype="auto").parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(train_model, "cpu_bf16_instructions", lambda: None)
    assert next(load_model(tiny_models("llama"), dtype="auto").parameters()).dtype == torch.float32
    assert next(load_model(tiny_models("llama")).parameters()).dtype == torch.float32  # the default stays fp32
