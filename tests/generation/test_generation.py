"""The generation engine's text side: incremental detokenisation (pieces add up to one decode of
everything, a multi-byte character never split), stop strings held back and cut, and the sampling
options checked in one place."""

import pytest

from instructglm.generation import Detokenizer, Engine, SamplingConfig, SamplingError, StopText, TextStream

MIXED = "今天天气很好。The weather is nice today — 你好，世界！ 🌏 Paris. 北京是中国的首都。"


@pytest.fixture(scope="module")
def tok():
    from tiny import make_tokenizer

    return make_tokenizer()


def test_stop_text_holds_back_what_may_become_a_marker():
    stop = StopText(("### Instruction:", "### Response:"), strip=True)
    shown = [stop.feed(p) for p in ["\n ", "Par", "is", ". ", "\n#", "#", "# Ins", "truction:", "more"]]
    assert shown == ["", "Par", "is", ".", "", "", "", "", ""]
    assert stop.stopped and "".join(shown) == "Paris." == stop.answer
    stop = StopText(("### Instruction:",), strip=True)
    assert [stop.feed(p) for p in ["a #", "1 ", "你好"]] == ["a", " #1", " 你好"]  # '#1' is no marker
    assert stop.finish() == "" and stop.answer == "a #1 你好"


def test_stop_text_without_strip_keeps_whitespace_and_shows_a_held_tail_at_the_end():
    stop = StopText(("END",))
    assert [stop.feed(p) for p in [" a ", "E", "N"]] == [" a ", "", ""]
    assert stop.finish() == "EN" and stop.answer == " a EN"
    stop = StopText(("END",))
    assert stop.feed(" xEND tail") == " x" and stop.stopped and stop.feed("more") == ""


def test_detokenizer_pieces_add_up_and_never_split_a_character(tok):
    ids = tok(MIXED, add_special_tokens=False).input_ids
    assert len(ids) > len(MIXED) / 2  # byte-level pieces: many characters span several tokens
    detok = Detokenizer(tok)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tok.decode(ids) == MIXED
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # held back while a character was incomplete


def test_detokenizer_cost_per_token_is_flat(tok):
    """About one decode per token, of at most a window of ids, however long the answer: the text
    of the window's start is kept from the previous token, not decoded again."""
    ids = tok(MIXED * 8, add_special_tokens=False).input_ids
    detok = Detokenizer(tok)
    calls = []
    decode = detok._decode
    detok._decode = lambda part: (calls.append(len(part)), decode(part))[1]
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == MIXED * 8
    assert len(ids) > 10 * Detokenizer.WINDOW
    assert max(calls) <= Detokenizer.WINDOW + 4  # + the byte tokens of a character still incomplete
    assert len(calls) < 1.25 * len(ids)  # re-decoding the context every token would be 2 per token


def test_text_stream_streamed_equals_whole_answer(tok):
    text = "  北京是中国的首都。\n### Instruction:\n下一个问题"
    ids = tok(text, add_special_tokens=False).input_ids
    streamed = []
    stream = TextStream(tok, ("### Instruction:",), strip=True, eos=tok.eos_token_id, on_text=streamed.append)
    for i in ids:
        stream.push(i)
    assert stream.done and stream.reason == "stop"
    assert "".join(streamed) == stream.text == "北京是中国的首都。"
    assert all("\ufffd" not in p for p in streamed)


def test_text_stream_eos_length_and_cancel(tok):
    ids = tok("你好，世界", add_special_tokens=False).input_ids
    stream = TextStream(tok, eos=tok.eos_token_id)
    for i in [*ids, tok.eos_token_id, *ids]:
        stream.push(i)
    assert (stream.reason, stream.text, stream.tokens) == ("stop", "你好，世界", len(ids))
    stream = TextStream(tok, max_tokens=2)
    for i in ids:
        stream.push(i)
    assert stream.reason == "length" and stream.tokens == 2 and stream.text == tok.decode(ids[:2])
    shown = []
    stream = TextStream(tok, on_text=shown.append)
    stream.push(ids[0])
    stream.cancel()
    stream.push(ids[1])
    assert stream.reason == "cancelled" and stream.tokens == 1


def test_engine_streams_what_it_answers(tiny_models, tok):
    """The pieces ``on_text`` sees concatenate to the answer, row by row, in one batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instructglm.templates import get_template

    path = tiny_models("llama")
    tokenizer = AutoTokenizer.from_pretrained(path)
    engine = Engine(AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer)
    template = get_template("alpaca")
    prompts = engine.prompts_ids(template, [[{"role": "user", "content": q}] for q in ("你是谁？", "Who are you?")])
    pieces = {0: [], 1: []}
    answers = engine.generate(prompts, SamplingConfig(max_new_tokens=24), template.stop,
                              on_text=lambda row, piece: pieces[row].append(piece))
    assert ["".join(pieces[0]), "".join(pieces[1])] == answers
    assert answers == [engine.generate([p], SamplingConfig(max_new_tokens=24), template.stop)[0] for p in prompts]


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", -1), ("temperature", float("nan")),
                                         ("top_p", 0), ("top_p", 1.5), ("top_k", -1), ("repetition_penalty", 0)])
def test_sampling_ranges_are_checked_in_one_place(field, value):
    with pytest.raises(SamplingError, match="--" + field.replace("_", "-")) as e:
        SamplingConfig(**{field: value})
    assert e.value.field == field


def test_sampling_options_for_transformers():
    assert SamplingConfig().generate_options() == dict(max_new_tokens=128, do_sample=False, temperature=None,
                                                       top_p=None, top_k=None)
    sampled = SamplingConfig(temperature=0.7, top_k=5, repetition_penalty=1.2).generate_options()
    assert sampled["do_sample"] and sampled["top_k"] == 5 and sampled["repetition_penalty"] == 1.2
