"""Native ChatGLM-6B (v1) against figures recorded from the original remote code.

``tests/data/chatglm/v1/reference.json`` holds what THUDM's own modeling/tokenization code
(transformers 4.30.2, torch 2.13 CPU, fp32) produced on the tiny checkpoint that
``tests/helpers/chatglm_tiny.py`` rebuilds: logits at a fixed set of vocabulary columns plus each
row's sum, max and argmax, greedy continuations, and tokenizer ids. Only figures are stored.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

import chatglm_tiny  # noqa: E402

from instructglm.models.chatglm import (  # noqa: E402
    ChatGLMv1ForCausalLM,
    is_chatglm_v1_dir,
    load_chatglm_v1,
    load_chatglm_v1_tokenizer,
)

REF = json.loads((chatglm_tiny.DATA_DIR / "reference.json").read_text(encoding="utf-8"))
COLS = REF["columns"]
TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return chatglm_tiny.build_tiny_checkpoint(tmp_path_factory.mktemp("chatglm_v1") / "tiny")


@pytest.fixture(scope="module")
def prefix_ckpt(tmp_path_factory) -> Path:
    return chatglm_tiny.build_tiny_checkpoint(tmp_path_factory.mktemp("chatglm_v1_prefix") / "tiny", pre_seq_len=4)


@pytest.fixture(scope="module")
def tok(ckpt):
    return load_chatglm_v1_tokenizer(ckpt)


@pytest.fixture(scope="module")
def model(ckpt):
    return load_chatglm_v1(ckpt)


def assert_rows_match(logits: torch.Tensor, rows: list[dict]):
    """Every recorded row: the sampled columns and the max within TOL, the row sum within the
    rounding of 20k fp32 additions, the argmax equal. The sum bound is 1e-6 per column: CPUs with
    different matmul kernels (AVX-512 vs AMX blocking in oneDNN) move each logit by about that
    much, which over 20k columns was seen to reach 6.6e-3; a real error (a shifted column, a
    missing bias) moves the sum by far more."""
    for r in rows:
        row = logits[r["b"], r["s"]].float()
        diff = (row[COLS] - torch.tensor(r["cols"])).abs().max().item()
        assert diff < TOL, (r["b"], r["s"], diff)
        assert abs(row.max().item() - r["max"]) < TOL
        assert abs(row.double().sum().item() - r["sum"]) < 1e-6 * row.numel()
        assert int(row.argmax()) == r["argmax"]


def test_detects_v1_layout(ckpt, tmp_path):
    assert is_chatglm_v1_dir(ckpt)
    v2 = json.loads((ckpt / "config.json").read_text()) | {"padded_vocab_size": 100, "ffn_hidden_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(v2))
    assert not is_chatglm_v1_dir(tmp_path)  # ChatGLM2/3 share model_type "chatglm"
    assert not is_chatglm_v1_dir(tmp_path / "missing")


def test_tokenizer_ids_match_original(tok):
    for case in REF["tokenizer"]:
        if "pair" in case:
            assert tok(*case["pair"])["input_ids"] == case["input_ids"]
            continue
        assert tok.tokenize(case["text"]) == case["tokens"], case["text"]
        assert tok(case["text"])["input_ids"] == case["input_ids"], case["text"]
        assert tok.encode(case["text"], add_special_tokens=False) == case["no_special"]
        if "[gMASK]" not in case["text"]:  # old transformers put spaces around special tokens
            assert tok.decode(case["no_special"]) == case["decoded"]


def test_tokenizer_offset_is_configurable(ckpt):
    shifted = load_chatglm_v1_tokenizer(ckpt, num_image_tokens=0)  # the last official revision's value
    base = load_chatglm_v1_tokenizer(ckpt)
    text = "你好\t  world\n"
    assert [i + 20000 for i in shifted.encode(text)] == base.encode(text)
    assert base.convert_ids_to_tokens(5) == "<image_5>"


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_logits_match_original(model, tok, impl, monkeypatch):
    monkeypatch.setattr(model.config, "_attn_implementation", impl)  # read at every forward
    for name, case in REF["logits"].items():
        ids = case["input_ids"]
        ids = torch.tensor(ids if isinstance(ids[0], list) else [ids])
        # The original got a 4-D mask and [b, 2, s] positions from its tokenizer for the padded
        # cases; here a plain 2-D padding mask is enough, the model derives the rest.
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits
        assert_rows_match(logits, case["rows"])


def test_original_position_ids_accepted(model):
    case = REF["logits"]["left_padded_batch"]
    ids = torch.tensor(case["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=torch.tensor(case["position_ids"]),
                       attention_mask=~torch.tensor(case["attention_mask_masked"])).logits  # original: True = masked
    assert_rows_match(logits, case["rows"])


def test_greedy_generate_matches_original(model, tok):
    for name, case in REF["generate"].items():
        if name == "left_padded_batch":
            batch = tok(case["texts"], padding=True, return_tensors="pt")
            assert batch["input_ids"].tolist() == case["input_ids"]
            out = model.generate(**batch, max_new_tokens=10, do_sample=False)
            assert out.tolist() == case["output_ids"]
        else:
            out = model.generate(input_ids=torch.tensor([case["input_ids"]]), max_new_tokens=10, do_sample=False)
            assert out[0].tolist() == case["output_ids"], name


def test_manual_decode_loop_matches_original(model, tok):
    """A hand-written loop like InstructGLM's serving engine (1-D positions, the cache passed back,
    rows dropped from the batch) decodes like the original's generate: the model continues GLM's
    2-D positions from the cache."""
    case = REF["generate"]["left_padded_batch"]
    batch = tok(case["texts"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pos, cache, rows = (mask.cumsum(-1) - 1).clamp(min=0), None, [[], []]
    live = [0, 1]
    with torch.no_grad():
        for step in range(10):
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            cache, nxt = out.cache, out.logits[:, -1].argmax(-1)
            for r, t in zip(live, nxt.tolist()):
                rows[r].append(t)
            if step == 4:  # drop row 0 from the batch, as the engine does with a finished row
                keep = torch.tensor([1])
                cache.batch_select_indices(keep)
                live, mask, pos, nxt = [1], mask[keep], pos[keep], nxt[keep]
            ids, mask, pos = nxt[:, None], torch.cat([mask, torch.ones_like(mask[:, :1])], 1), pos[:, -1:] + 1
    width = len(case["input_ids"][0])
    assert rows[0] == case["output_ids"][0][width:width + 5]
    assert rows[1] == case["output_ids"][1][width:]


def test_ptuning_v2_prefix_encoder_matches_original(prefix_ckpt):
    model = load_chatglm_v1(prefix_ckpt)
    ref = REF["prefix"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ref["input_ids"]])).logits
    assert_rows_match(logits, ref["rows"])
    out = model.generate(input_ids=torch.tensor([ref["generate"]["input_ids"]]), max_new_tokens=6, do_sample=False)
    assert out[0].tolist() == ref["generate"]["output_ids"]


def test_peft_prefix_tuning_is_the_same_prefix(ckpt, prefix_ckpt):
    """PEFT's prefix tuning lays its virtual keys/values out like P-Tuning v2, so loading the
    official prefix weights into it reproduces the original's prefix logits; it also trains."""
    from peft import PrefixTuningConfig, get_peft_model

    peft_model = get_peft_model(load_chatglm_v1(ckpt), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    official = load_chatglm_v1(prefix_ckpt).transformer.prefix_encoder.embedding.weight
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(official)
    peft_model.eval()
    ids = torch.tensor([REF["prefix"]["input_ids"]])
    with torch.no_grad():
        logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert_rows_match(logits, REF["prefix"]["rows"])
    # generate() injects the prefix into the cache (PEFT looks for it under past_key_values)
    gen = REF["prefix"]["generate"]
    out = peft_model.generate(input_ids=torch.tensor([gen["input_ids"]]), max_new_tokens=6, do_sample=False)
    assert out[0].tolist() == gen["output_ids"]
    # a left-padded batch (its mask is extended by the prefix) decodes each row as it does alone
    texts = REF["generate"]["left_padded_batch"]["texts"]
    batch = load_chatglm_v1_tokenizer(ckpt)(texts, padding=True, return_tensors="pt")
    together = peft_model.generate(**batch, max_new_tokens=4, do_sample=False)[:, -4:]
    for row, mask, expected in zip(batch["input_ids"], batch["attention_mask"], together):
        alone = peft_model.generate(input_ids=row[mask.bool()][None], max_new_tokens=4, do_sample=False)
        assert alone[0, -4:].tolist() == expected.tolist()
    peft_model.train()
    loss = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    assert peft_model.prompt_encoder["default"].embedding.weight.grad.abs().sum() > 0


def _answer_example(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    ids = tok(prompt, answer)["input_ids"]  # prompt [gMASK] <sop> answer <eop>
    start = ids.index(tok.bos_token_id)
    return ids, [-100] * (start + 1) + ids[start + 1:]


def test_lora_trains_and_round_trips(ckpt, tok, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_chatglm_v1(ckpt), LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"]))
    ids, labels = _answer_example(tok, "问：今天天气很好", "the quick brown fox")
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_chatglm_v1(ckpt), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, trained, atol=1e-5)
    merged = reloaded.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["model_type"] == "chatglm" and "auto_map" in saved and saved["num_layers"] == 2
    assert is_chatglm_v1_dir(tmp_path / "merged")
    from safetensors.torch import load_file

    names = set(load_file(tmp_path / "merged" / "model.safetensors"))
    assert "transformer.layers.0.attention.query_key_value.weight" in names
    assert "transformer.word_embeddings.weight" in names and "transformer.final_layernorm.bias" in names
    with torch.no_grad():
        assert torch.allclose(load_chatglm_v1(tmp_path / "merged")(input_ids=ids).logits, trained, atol=1e-4)


def test_gradient_checkpointing_same_gradients(ckpt, tok):
    ids, labels = _answer_example(tok, "北京是中国的首都", "hello world")
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    model, grads = load_chatglm_v1(ckpt).train(), []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.transformer.layers[0].gradient_checkpointing
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        grads.append(model.transformer.layers[0].attention.query_key_value.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def _block_causal(segments: torch.Tensor) -> torch.Tensor:
    """The mask InstructGLM's packing gives transformers models: same example and not in the future."""
    n = segments.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal[None])[:, None]


@pytest.mark.parametrize("with_mask", [False, True])
def test_packed_row_equals_unpacked(model, tok, with_mask):
    """Two examples in one row (position ids restart at 0 for each) see only themselves, with the
    prefix-LM mask and 2-D positions of each example, whether or not the packing's block-causal
    4-D mask is passed too."""
    assert ChatGLMv1ForCausalLM.supports_packing
    a, _ = _answer_example(tok, "问：今天天气很好", "the quick brown fox")
    b, _ = _answer_example(tok, "def add(a, b):\n    return a + b", "print")
    row = torch.tensor([a + b])
    positions = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    segments = torch.tensor([[0] * len(a) + [1] * len(b)])
    mask = _block_causal(segments) if with_mask else None
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=positions, attention_mask=mask).logits[0]
        alone_a = model(input_ids=torch.tensor([a])).logits[0]
        alone_b = model(input_ids=torch.tensor([b])).logits[0]
    assert (packed[:len(a)] - alone_a).abs().max() < TOL
    assert (packed[len(a):] - alone_b).abs().max() < TOL
