"""ChatGLM2 / ChatGLM3 / GLM-4 remote-code checkpoints converted to transformers' native ``glm``.

The figures in ``tests/data/chatglm/<gen>/reference.json`` come from running the original THUDM remote
code (transformers 4.40.2, fp32, CPU) on the tiny checkpoints that ``tests/helpers/chatglm2_tiny.py``
rebuilds bit for bit. The original code itself is not in this repository.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

import chatglm2_tiny as tiny  # noqa: E402

from instructglm.errors import UserError  # noqa: E402
from instructglm.models.chatglm.glm2 import (chatglm_generation, chatglm_source, convert_chatglm2,  # noqa: E402
                                             is_chatglm2_dir, prepare_chatglm2, write_chatglm_checkpoint)
from instructglm.models.chatglm.glm2_layout import native_config, to_chatglm_layout, to_native_layout  # noqa: E402

GENS = {"v2": 2, "v3": 3, "glm4": 4}
TOL = 1e-4


def reference(gen: str) -> dict:
    return json.loads((tiny.DATA / gen / "reference.json").read_text())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("chatglm_src")
    return {gen: tiny.make_tiny_checkpoint(root / gen, gen) for gen in GENS}


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory):
    cache = tmp_path_factory.mktemp("chatglm_cache")
    return {gen: prepare_chatglm2(src, cache) for gen, src in checkpoints.items()}


@pytest.fixture(scope="module")
def natives(converted):
    from transformers import AutoModelForCausalLM

    return {gen: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for gen, d in converted.items()}


@pytest.fixture(scope="module")
def fast_tokenizers(converted):
    from transformers import AutoTokenizer

    return {gen: AutoTokenizer.from_pretrained(d) for gen, d in converted.items()}


def assert_logits_match(logits: torch.Tensor, ref: dict, what: str) -> float:
    """Compare [seq, vocab] logits with the recorded figures; returns the max |delta| seen."""
    assert list(logits.shape) == ref["shape"], what
    n = ref["slice_cols"]
    deltas = [
        (logits[:, :n] - torch.tensor(ref["slice"])).abs().max(),
        (logits[-1] - torch.tensor(ref["last_row"])).abs().max(),
        # whole-row checksums catch a difference in any column, not only the stored slice
        (logits.double().sum(-1) - torch.tensor(ref["row_sum"], dtype=torch.float64)).abs().max() / logits.shape[1],
        (logits.double().norm(dim=-1) - torch.tensor(ref["row_l2"], dtype=torch.float64)).abs().max(),
        (logits.topk(5, dim=-1).values - torch.tensor(ref["top5_values"])).abs().max(),
    ]
    worst = max(float(d) for d in deltas)
    assert worst < TOL, f"{what}: max |delta| {worst:.3g}"
    assert logits.argmax(-1).tolist() == ref["argmax"], what
    assert logits.topk(5, dim=-1).indices.tolist() == ref["top5_ids"], what
    return worst


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gen", GENS)
def test_builder_reproduces_the_reference_weights(gen, checkpoints):
    from safetensors.torch import load_file

    sd = load_file(str(checkpoints[gen] / "model.safetensors"))
    assert tiny.state_dict_sha256(sd) == reference(gen)["weights_sha256"]


@pytest.mark.parametrize("gen", GENS)
def test_detection(gen, checkpoints, converted, tmp_path):
    assert is_chatglm2_dir(checkpoints[gen])
    assert chatglm_generation(checkpoints[gen]) == GENS[gen]
    assert not is_chatglm2_dir(converted[gen])  # the native directory is a plain glm model
    assert chatglm_generation(converted[gen]) is None
    # ChatGLM-6B (v1) shares model_type "chatglm" but not the layout
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm", "num_layers": 2, "vocab_size": 10,
                                                      "inner_hidden_size": 8, "position_encoding_2d": True}))
    assert not is_chatglm2_dir(tmp_path)


def test_generation_without_role_tokens_in_files(checkpoints, tmp_path):
    """v2 and v3 share the sentencepiece file: the name and generation_config decide."""
    import shutil

    d = tmp_path / "chatglm3-6b"
    shutil.copytree(checkpoints["v2"], d)
    for name, key in (("config.json", "_name_or_path"), ("tokenizer_config.json", "name_or_path")):
        cfg = json.loads((d / name).read_text())
        cfg[key] = "somewhere/unnamed"
        (d / name).write_text(json.dumps(cfg))
    assert chatglm_generation(d) == 3  # from the directory name
    d2 = tmp_path / "plain"
    shutil.copytree(d, d2)
    assert chatglm_generation(d2) == 2
    (d2 / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 64795, 64797]}))
    assert chatglm_generation(d2) == 3


@pytest.mark.parametrize("gen", GENS)
def test_native_config(gen, checkpoints, converted):
    cfg = json.loads((converted[gen] / "config.json").read_text())
    orig = json.loads((checkpoints[gen] / "config.json").read_text())
    assert cfg["model_type"] == "glm" and "auto_map" not in cfg
    assert cfg["head_dim"] == orig["kv_channels"]
    assert cfg["num_key_value_heads"] == orig["multi_query_group_num"]
    rope = cfg["rope_parameters"]
    assert rope["partial_rotary_factor"] == 0.5
    assert rope["rope_theta"] == 10000 * orig.get("rope_ratio", 1)
    assert not list(converted[gen].glob("*.py"))


@pytest.mark.parametrize("gen", GENS)
def test_logits_equal_the_original(gen, natives):
    ref = reference(gen)
    model = natives[gen]
    for name, entry in ref["inputs"].items():
        with torch.no_grad():
            logits = model(torch.tensor([entry["ids"]])).logits[0]
        assert_logits_match(logits, entry["logits"], f"{gen}/{name}")


@pytest.mark.parametrize("gen", GENS)
def test_left_padded_batch_equals_the_original(gen, natives):
    """The original pads left and restarts position ids at the first real token; the native model
    gets the same logits with those position ids, and also with its default ones (rotary is relative)."""
    rows = reference(gen)["padded_batch"]
    ids = torch.tensor([r["input_ids"] for r in rows])
    mask = torch.tensor([r["attention_mask"] for r in rows])
    pos = torch.tensor([r["position_ids"] for r in rows])
    for kwargs in ({"position_ids": pos}, {}):
        with torch.no_grad():
            out = natives[gen](input_ids=ids, attention_mask=mask, **kwargs).logits
        for b, r in enumerate(rows):
            assert_logits_match(out[b][mask[b].bool()], r["logits"], f"{gen}/padded[{b}] {list(kwargs)}")


@pytest.mark.parametrize("gen", GENS)
def test_greedy_continuation_equals_the_original(gen, natives):
    for name, entry in reference(gen)["inputs"].items():
        if "greedy" not in entry:
            continue
        ids = torch.tensor([entry["ids"]])
        out = natives[gen].generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(entry["greedy"]),
                                    do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out[0, ids.shape[1]:].tolist() == entry["greedy"], f"{gen}/{name}"


def test_the_comparison_detects_a_wrong_rotary_mapping(checkpoints):
    """Negative control: the same weights with full (not partial) rotary, or without rope_ratio, are
    visibly different — so the equality above really pins the mapping down."""
    from safetensors.torch import load_file
    from transformers import GlmForCausalLM

    gen = "glm4"
    orig = json.loads((checkpoints[gen] / "config.json").read_text())
    sd = to_native_layout(load_file(str(checkpoints[gen] / "model.safetensors")), orig)
    entry = reference(gen)["inputs"]["chat"]
    for change in ({"partial_rotary_factor": 1.0}, {"rope_theta": 10000.0}):
        cfg = native_config(orig)
        cfg.rope_parameters = {**cfg.rope_parameters, **change}
        model = GlmForCausalLM(cfg).eval()
        model.load_state_dict(sd, strict=True)
        with torch.no_grad():
            logits = model(torch.tensor([entry["ids"]])).logits[0]
        with pytest.raises(AssertionError):
            assert_logits_match(logits, entry["logits"], str(change))


@pytest.mark.parametrize("gen", GENS)
def test_fast_tokenizer_ids_equal_the_original(gen, fast_tokenizers):
    tok = fast_tokenizers[gen]
    ref = reference(gen)
    assert tok.padding_side == "left"
    for case in ref["tokenizer"]:
        literal_specials = any(s in case["text"] for s in ("[gMASK]", "<|", "sop", "eop"))
        # ChatGLM2/3 remote code encodes special-token text literally: split_special_tokens=True does too.
        modes = [True] if gen != "glm4" and literal_specials else [False, True] if gen != "glm4" else [False]
        for split in modes:
            got = tok(case["text"], split_special_tokens=split)["input_ids"]
            got_plain = tok(case["text"], add_special_tokens=False, split_special_tokens=split)["input_ids"]
            assert got == case["ids"], (gen, case["text"], split)
            assert got_plain == case["ids_no_special"], (gen, case["text"], split)


@pytest.mark.parametrize("gen", GENS)
def test_chat_template_equals_the_original_chat_ids(gen, fast_tokenizers):
    tok = fast_tokenizers[gen]
    chat = reference(gen)["chat"]
    if gen == "glm4":
        messages = chat["messages"]
    else:
        messages = [{"role": "system", "content": chat["system"]}] if chat.get("system") else []
        history = chat.get("history") or [["Hello", "Hi there"]]
        for q, a in history:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": chat.get("query", "你是谁？")})
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if gen == "v2":
        assert text == "[gMASK]<sop>" + chat["prompt"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == chat["ids"]


@pytest.mark.parametrize("gen", GENS)
def test_special_tokens_and_end_of_turn(gen, fast_tokenizers, converted):
    tok = fast_tokenizers[gen]
    gcfg = json.loads((converted[gen] / "generation_config.json").read_text())
    eos = gcfg["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    assert tok.eos_token_id in eos
    if gen != "v2":
        assert tok.convert_tokens_to_ids("<|user|>") in eos and tok.convert_tokens_to_ids("<|observation|>") in eos
    assert tok.decode(tok("你好 world\n\tx")["input_ids"], skip_special_tokens=True) == "你好 world\n\tx"


@pytest.mark.parametrize("gen", GENS)
def test_weights_round_trip(gen, checkpoints, converted):
    from safetensors.torch import load_file

    orig_cfg = json.loads((checkpoints[gen] / "config.json").read_text())
    original = load_file(str(checkpoints[gen] / "model.safetensors"))
    native = load_file(str(converted[gen] / "model.safetensors"))
    assert "lm_head.weight" in native and not any("inv_freq" in k for k in native)
    back = to_chatglm_layout(native, orig_cfg)
    assert sorted(back) == sorted(original)
    for k in original:
        assert back[k].dtype == original[k].dtype and torch.equal(back[k], original[k]), k
    # and in memory, without the files
    again = to_chatglm_layout(to_native_layout(original, orig_cfg), orig_cfg)
    assert all(torch.equal(again[k], original[k]) for k in original)


def test_sharded_checkpoint_and_written_back_layout(tmp_path, natives):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src = tiny.make_tiny_checkpoint(tmp_path / "sharded", "v3", shards=2)
    dst = convert_chatglm2(src, tmp_path / "native")
    assert (dst / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    entry = reference("v3")["inputs"]["chat"]
    with torch.no_grad():
        assert_logits_match(model(torch.tensor([entry["ids"]])).logits[0], entry["logits"], "sharded")
    # write the native weights back in the original layout next to the original's files
    back = write_chatglm_checkpoint(model.state_dict(), src, tmp_path / "back")
    assert is_chatglm2_dir(back) and chatglm_generation(back) == 3
    written = load_file(str(back / "model.safetensors"))
    original = tiny.tiny_state_dict(tiny.tiny_config("v3"), tiny.SEEDS["v3"])
    assert sorted(written) == sorted(original)
    assert all(torch.equal(written[k], original[k]) for k in original)
    half = load_file(str(write_chatglm_checkpoint(model.state_dict(), src, tmp_path / "bf16",
                                                  dtype=torch.bfloat16) / "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in half.values())
    assert chatglm_source(dst)["generation"] == 3 and chatglm_source(src) is None


def test_prepare_is_cached_and_atomic(checkpoints, tmp_path):
    src = checkpoints["v2"]
    first = prepare_chatglm2(src, tmp_path)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert prepare_chatglm2(src, tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # not converted again
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp dirs left behind
    # an edited checkpoint gets a fresh conversion
    cfg = src / "config.json"
    os.utime(cfg, ns=(cfg.stat().st_atime_ns, cfg.stat().st_mtime_ns + 10**9))
    second = prepare_chatglm2(src, tmp_path)
    assert second != first and (second / ".complete").is_file()


def test_unsupported_variants_are_refused(checkpoints, tmp_path):
    import shutil

    for change in ({"quantization_bit": 4}, {"add_bias_linear": True}, {"pre_seq_len": 8}, {"rmsnorm": False},
                   {"vision_config": {"hidden_size": 8}}):
        d = tmp_path / next(iter(change))
        shutil.copytree(checkpoints["v2"], d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(change)
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(UserError):
            convert_chatglm2(d, tmp_path / "out")
    with pytest.raises(UserError):
        convert_chatglm2(tmp_path, tmp_path / "out2")  # not a checkpoint at all


def test_lora_trains_on_the_native_model(converted, fast_tokenizers):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(converted["v3"], dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_up_proj", "down_proj"]))
    tok = fast_tokenizers["v3"]
    text = tok.apply_chat_template([{"role": "user", "content": "你是谁？"},
                                    {"role": "assistant", "content": "我是一个测试模型。"}], tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    peft_model.train()
    for _ in range(5):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - adapted).abs().max() < 1e-4
    # the merged weights go back into the ChatGLM layout and forward again unchanged
    info = chatglm_source(converted["v3"])
    assert info["generation"] == 3
    orig_cfg = info["original_config"]
    back = to_native_layout(to_chatglm_layout(merged.state_dict(), orig_cfg), orig_cfg)
    assert all(torch.equal(back[k], v) for k, v in merged.state_dict().items())


@pytest.mark.parametrize("opts", [
    {"normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True, "add_dummy_prefix": True},
    {"normalization_rule_name": "identity", "remove_extra_whitespaces": True, "add_dummy_prefix": False},
    {"normalization_rule_name": "nfkc", "remove_extra_whitespaces": False, "add_dummy_prefix": True},
])
def test_sentencepiece_conversion_follows_the_normalizer_spec(opts, tmp_path):
    """Real vocabularies may normalise differently from the tiny one: the converter reads the model's
    normalizer_spec; sentencepiece itself is the reference here."""
    import io

    import sentencepiece as spm

    from instructglm.models.chatglm.tokenizers import sentencepiece_to_tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(tiny.CORPUS * 4), model_writer=buf, model_type="bpe",
                                   vocab_size=450, character_coverage=1.0, byte_fallback=True, num_threads=1,
                                   minloglevel=2, **opts)
    path = tmp_path / "sp.model"
    path.write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = sentencepiece_to_tokenizer(path, ["[gMASK]"])
    for text in ["  Hello   world  ", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ﬁ", "你好，世界！\tTab\n\nnew  line ", "", " ", "龘😀"]:
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), (opts, text)
    assert tok.token_to_id("[gMASK]") == sp.vocab_size()
