"""The ChatGLM family templates render exactly the ids of the official ``chat()`` / ``build_prompt`` /
``build_chat_input`` (recorded in tests/data/chatglm/*/reference.json from the original code), and
``--template auto`` picks them from the model's tokenizer."""

from __future__ import annotations

import json

import pytest

import chatglm2_tiny
import chatglm_tiny

import instructglm
from instructglm.constants import IGNORE_INDEX
from instructglm.errors import UserError
from instructglm.templates import get_template
from instructglm.tokenize import SegmentEncoder


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("chatglm")
    mp = pytest.MonkeyPatch()
    mp.setenv("INSTRUCTGLM_CACHE", str(root / "cache"))
    toks = {"v1": instructglm.load_tokenizer(str(chatglm_tiny.build_tiny_checkpoint(root / "v1")))}
    for gen in chatglm2_tiny.GENERATIONS:
        toks[gen] = instructglm.load_tokenizer(str(chatglm2_tiny.make_tiny_checkpoint(root / gen, gen)))
    yield toks
    mp.undo()


def encode(tok, segments):
    ((ids, labels),) = SegmentEncoder(tok).encode([segments])
    return ids, labels


def recorded_chat(gen):
    """The conversation of the recorded official chat call, as messages."""
    chat = json.loads((chatglm2_tiny.DATA / gen / "reference.json").read_text())["chat"]
    if "messages" in chat:
        return chat["messages"], chat["ids"]
    history = chat.get("history") or []
    if gen == "v2":  # the recorded prompt text holds the history: "[Round 1]\n\n问：Hello\n\n答：Hi there"
        history = [["Hello", "Hi there"]]
        assert chat["prompt"].startswith("[Round 1]\n\n问：Hello\n\n答：Hi there\n\n")
    msgs = [{"role": "system", "content": chat["system"]}] if chat.get("system") else []
    for q, a in history:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    query = chat.get("query") or chat["prompt"].split("问：")[-1].split("\n\n答：")[0]
    return msgs + [{"role": "user", "content": query}], chat["ids"]


@pytest.mark.parametrize("gen,name", [("v2", "chatglm2"), ("v3", "chatglm3"), ("glm4", "glm4")])
def test_family_prompt_ids_equal_the_official_chat_ids(tokenizers, gen, name):
    tok = tokenizers[gen]
    template = get_template("auto", tok)
    assert template.name == name
    messages, official = recorded_chat(gen)
    ids, _ = encode(tok, template.prompt(messages))
    assert ids == official
    # the converted tokenizer's own chat template renders the same ids
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False) == official


def trained(tok, ids, labels):
    return tok.convert_ids_to_tokens([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])


def test_role_token_families_train_the_answer_and_the_next_role_token(tokenizers):
    messages, official = recorded_chat("v3")
    convo = messages + [{"role": "assistant", "content": "OK"}]
    tok = tokenizers["v3"]
    ids, labels = encode(tok, get_template("chatglm3").render(convo))
    assert ids[:len(official)] == official
    # ChatGLM3's fine-tuning demo: "\n"+answer and the role token that follows it are trained, EOS last
    assert trained(tok, ids, labels) == ["▁", "<0x0A>", "▁", "H", "i", "▁th", "er", "e", "<|user|>",
                                         *tok.convert_ids_to_tokens(ids[len(official):])]
    assert ids[-1] == tok.eos_token_id
    tok4 = tokenizers["glm4"]
    messages4, official4 = recorded_chat("glm4")
    ids4, labels4 = encode(tok4, get_template("glm4").render(messages4 + [{"role": "assistant", "content": "OK"}]))
    assert ids4[:len(official4)] == official4
    assert tok4.convert_ids_to_tokens(ids4[-1:]) == ["<|user|>"] and labels4[-1] == ids4[-1]


def test_observation_turns_use_the_observation_role(tokenizers):
    tok = tokenizers["v3"]
    convo = [{"role": "user", "content": "天气"},
             {"role": "assistant", "content": "[function_call]\n{\"name\": \"w\"}"},
             {"role": "user", "content": "[observation]\n晴"}, {"role": "assistant", "content": "晴天"}]
    segments = get_template("chatglm3").render(convo)
    text = "".join(s.text for s in segments)
    assert "<|observation|>\n 晴<|assistant|>" in text and "[observation]" not in text
    ids, labels = encode(tok, segments)
    assert "<|observation|>" in trained(tok, ids, labels)  # the call is closed by the observation role token


def test_chatglm6b_renders_its_chat_rounds_with_gmask_sop(tokenizers):
    tok = tokenizers["v1"]
    template = get_template("auto", tok)
    assert template.name == "chatglm-6b"
    ref = json.loads((chatglm_tiny.DATA_DIR / "reference.json").read_text(encoding="utf-8"))
    # recorded from the original:
    # encode("问：今天天气很好\n答：") [gMASK] <sop> encode("the quick brown fox") <eop>
    row = ref["logits"]["prompt_answer"]["input_ids"]
    ids, labels = encode(tok, template.render([{"role": "user", "content": "问：今天天气很好\n答："},
                                               {"role": "assistant", "content": "the quick brown fox"}]))
    assert ids == row
    sop = row.index(tok.bos_token_id)
    assert labels[:sop + 1] == [IGNORE_INDEX] * (sop + 1) and labels[sop + 1:] == row[sop + 1:]
    # with history the official chat() builds "[Round i]\n问：…\n答：…\n" rounds from 0; the original
    # tokenizer appends [gMASK] <sop> to the whole prompt (ours is checked against it in test_chatglm_v1)
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "hello  world"},
               {"role": "user", "content": "天气"}]
    ids, _ = encode(tok, template.prompt(history))
    assert ids == tok("[Round 0]\n问：你好\n答：hello  world\n[Round 1]\n问：天气\n答：").input_ids
    assert template.cut("晴天\n[Round 2]\n问：再见") == "晴天"


def test_auto_falls_back_to_the_model_template_or_alpaca(tokenizer):
    assert get_template("auto", tokenizer).name == ("model" if tokenizer.chat_template else "alpaca")
    with pytest.raises(UserError, match="--template auto: needs the model's tokenizer"):
        get_template("auto")
    with pytest.raises(UserError, match="alternating user/assistant"):
        get_template("chatglm2").render([{"role": "assistant", "content": "x"}])
