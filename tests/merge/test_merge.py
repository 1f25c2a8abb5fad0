"""merge: several LoRA adapters in order, the fp32 check, dtype and shards, model card, chat template."""

import json

import pytest
import torch

from instructglm.cli import main
from instructglm.record import Message
from instructglm.templates import get_template


def user_message(instruction: str, input_text: str = "") -> dict:
    return Message.user(instruction, input_text).to_dict()


PROBE_IDS = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100, 7, 9]])


def make_lora(base: str, out, seed: int, init: bool = False, **info):
    """A LoRA adapter with random (non-zero) weights, saved like a 'train' output, without training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                            init_lora_weights=init))
    peft.save_pretrained(str(out))
    (out / "instructglm.json").write_text(json.dumps({"base_model": base, "method": "lora", "template": "alpaca",
                                                      "dataset": f"data/{out.name}.jsonl", "steps": 5, **info}))
    return out


def logits(model, ids=PROBE_IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


@pytest.mark.parametrize("arch", ["llama", "glm", "gemma3"])
def test_lora_merge_equals_base_plus_adapter(arch, tmp_path, tiny_models, capsys):
    from peft import PeftModel

    base = tiny_models(arch)
    adapter = make_lora(base, tmp_path / "a", seed=1)
    assert main(["merge", "--adapter", str(adapter), "-o", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "max |logit diff| vs base+adapter" in out and "tolerance 1e-03" in out
    expected_model = PeftModel.from_pretrained(load(base), str(adapter)).eval()
    expected = logits(expected_model)
    with expected_model.disable_adapter():
        plain = logits(expected_model)
    torch.testing.assert_close(logits(load(tmp_path / "m")), expected, rtol=1e-4, atol=1e-4)
    assert (expected - plain).abs().max() > 1e-2  # the adapter really changes the model


def test_two_adapters_merge_in_order(tmp_path, tiny_models, capsys):
    from peft import PeftModel

    base = tiny_models("llama")
    a = make_lora(base, tmp_path / "a", seed=1)
    b = make_lora(base, tmp_path / "b", seed=2)
    assert main(["merge", "--adapter", f"{a},{b}", "-o", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert out.index(f"{a} (lora)") < out.index(f"{b} (lora)")
    # Expected: merge A into a copy of the base, then apply B on the result through PEFT.
    with_a = PeftModel.from_pretrained(load(base), str(a)).merge_and_unload()
    only_a = logits(with_a)
    expected = logits(PeftModel.from_pretrained(with_a, str(b)).eval())  # (injects B into with_a)
    got = logits(load(tmp_path / "m"))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (got - only_a).abs().max() > 1e-2  # B was not dropped
    info = json.loads((tmp_path / "m" / "instructglm.json").read_text())
    assert info["merged_from"]["adapter"] == [str(a), str(b)]
    assert [s["adapter"] for s in info["merge_check"]["steps"]] == [str(a), str(b)]


def test_dtype_shards_model_card_and_chat_template(tmp_path, tiny_models, capsys):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    base = tiny_models("llama")
    run = tmp_path / "run"
    run.mkdir()
    adapter = make_lora(base, run / "adapter", seed=3)
    (run / "summary.json").write_text(json.dumps({"tuned": {"exact_match": 62.5}, "loss_last": 0.25}))
    assert main(["merge", "--adapter", str(adapter), "-o", str(tmp_path / "m"), "--dtype", "bf16",
                 "--max-shard-size", "100KB"]) == 0
    assert "saved as bfloat16" in capsys.readouterr().out
    m = tmp_path / "m"
    shards = sorted(m.glob("model-*.safetensors"))
    assert len(shards) > 1 and (m / "model.safetensors.index.json").is_file()
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((m / "config.json").read_text())["dtype"] == "bfloat16"
    # Within bf16 rounding of base + adapter.
    from peft import PeftModel
    expected = logits(PeftModel.from_pretrained(load(base), str(adapter)).eval())
    got = logits(load(m))
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()

    card = (m / "README.md").read_text()
    assert base in card and str(adapter) in card and "data/adapter.jsonl" in card
    assert "tuned.exact_match | 62.5" in card and "loss_last | 0.25" in card

    tok = AutoTokenizer.from_pretrained(str(m))
    tpl = get_template("alpaca")
    for messages in ([user_message("Who are you?")], [user_message("把下面的英文转换成大写字母", "good morning")],
                     [{"role": "system", "content": "Answer briefly."}, user_message("What is 2+2?")]):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text == "".join(s.text for s in tpl.prompt(messages))
    # Several turns: the earlier answer ends with EOS, exactly as training encodes it.
    chat = [user_message("Hi"), {"role": "assistant", "content": "Hello."}, user_message("Who are you?")]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text == "".join(s.text + (tok.eos_token if s.train else "") for s in tpl.prompt(chat))


def test_merge_refuses_a_no_op_adapter(tmp_path, tiny_models, capsys):
    base = tiny_models("llama")
    a = make_lora(base, tmp_path / "a", seed=1)
    zero = make_lora(base, tmp_path / "zero", seed=1, init=True)  # B = 0: changes nothing
    assert main(["merge", "--adapter", f"{a},{zero}", "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"{zero}: the trained weights do not change the model's logits" in err
    assert not (tmp_path / "m").exists()
