import json

import pytest

from instructglm.templates import Segment, get_template
from instructglm.constants import IGNORE_INDEX
from instructglm.tokenize import SegmentEncoder
from instructglm.errors import UserError

TWO_TURNS = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "四 (4)"}]

CHAT_JINJA = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
              "{% if m['role'] == 'assistant' %}<eos>{% endif %}\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def trained_texts(tokenizer, template, messages):
    """Decoded trained spans (maximal runs of trained labels) of one encoded conversation."""
    ((ids, labels),) = SegmentEncoder(tokenizer).encode([template.render(messages)])
    spans, run = [], []
    for x in labels + [IGNORE_INDEX]:
        if x != IGNORE_INDEX:
            run.append(x)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return ids, labels, spans


def test_chatglm_renders_chatglm6b_rounds_exactly(tokenizer):
    t = get_template("chatglm")
    segs = t.render(TWO_TURNS)
    assert "".join(s.text + ("<EOS>" if s.train else "") for s in segs) == (
        "Be brief.\n\n[Round 1]\n\n问：你好\n\n答：Hello!<EOS>\n\n[Round 2]\n\n问：2+2?\n\n答：四 (4)<EOS>")
    assert [s.train for s in segs] == [False, True, False, True]
    assert t.prompt(TWO_TURNS)[-1] == Segment("\n\n[Round 2]\n\n问：2+2?\n\n答：", False)
    assert t.cut("好的。\n\n[Round 3]\n\n问：再见") == "好的。"
    _, _, spans = trained_texts(tokenizer, t, TWO_TURNS)
    assert spans == ["Hello!<eos>", "四 (4)<eos>"]


@pytest.mark.parametrize("name", ["alpaca", "chatglm"])
def test_builtin_templates_train_every_assistant_turn(tokenizer, name):
    _, _, spans = trained_texts(tokenizer, get_template(name), TWO_TURNS)
    assert spans == [f"Hello!{tokenizer.eos_token}", f"四 (4){tokenizer.eos_token}"]


@pytest.fixture()
def chat_tokenizer(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT_JINJA
    return tok


def test_model_template_trains_content_plus_end_of_turn(chat_tokenizer):
    t = get_template("model", chat_tokenizer)
    msgs = TWO_TURNS
    ids, labels, spans = trained_texts(chat_tokenizer, t, msgs)
    assert spans == ["Hello!<eos>", "四 (4)<eos>"]
    # segments concatenated are exactly the chat template's rendering (minus its trailing newline)
    rendered = chat_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert "".join(s.text for s in t.render(msgs)) == rendered.rstrip("\n")
    prompt = "".join(s.text for s in t.prompt(msgs))
    assert prompt == chat_tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    assert t.opening == "<|assistant|>\n" and t.cut("Paris<eos>\n<|user|>\nmore") == "Paris"
    assert t.manifest()["template"] == "model" and len(t.manifest()["template_sha256"]) == 16


def test_model_template_without_chat_template_is_a_user_error(tokenizer):
    with pytest.raises(UserError, match="has no chat template"):
        get_template("model", tokenizer).render(TWO_TURNS)
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        get_template("model")


def test_file_template(tmp_path, tokenizer):
    path = tmp_path / "mine.yaml"
    path.write_text('user: "<|user|> R{round}: {content} {not a field}\\n"\n'
                    'assistant_prefix: "<|assistant|>\\n"\nassistant_suffix: "</s>"\n'
                    'turn_separator: "\\n"\nstop: ["<|user|>"]\n', encoding="utf-8")
    t = get_template(str(path))
    segs = t.render(TWO_TURNS)
    assert segs[0] == Segment("Be brief.\n\n<|user|> R1: 你好 {not a field}\n<|assistant|>\n", False)
    assert segs[1:3] == [Segment("Hello!", True, eos=False), Segment("</s>", True, eos=True)]
    assert segs[3] == Segment("\n<|user|> R2: 2+2? {not a field}\n<|assistant|>\n", False)
    _, _, spans = trained_texts(tokenizer, t, TWO_TURNS)
    assert spans == ["Hello!</s><eos>", "四 (4)</s><eos>"]
    assert t.cut(" yes\n<|user|> R3") == "yes"
    # the stored identity pins the content: a changed file is refused
    again = get_template(t.name)
    assert again.render(TWO_TURNS) == segs
    path.write_text(path.read_text() + "eos: false\n", encoding="utf-8")
    with pytest.raises(UserError, match="changed since"):
        get_template(t.name)
    as_json = tmp_path / "t.json"
    as_json.write_text(json.dumps({"user": "Q: {content}\n", "assistant_prefix": "A: ", "bogus": 1}))
    with pytest.raises(UserError, match="unknown template key 'bogus'"):
        get_template(str(as_json))
    as_json.write_text(json.dumps({"user": "Q\n"}))
    with pytest.raises(UserError, match="must contain"):
        get_template(str(as_json))
    with pytest.raises(UserError, match="not found"):
        get_template(str(tmp_path / "missing.yaml"))
