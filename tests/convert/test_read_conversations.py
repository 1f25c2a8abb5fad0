"""read_conversations: any format convert reads, the reply optional (what infer answers)."""

import json

import pytest

from instructglm.convert import read_conversations
from instructglm.errors import UserError


def _read(tmp_path, rows, **kw):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return read_conversations(src, **kw)


def _shape(conv):
    return [(m.role, m.content) for m in conv.messages]


# (record without its reply, the same record with its reply "A", the user turn both end the prompt with)
CASES = {
    "alpaca": ({"instruction": "q", "input": "x"}, {"instruction": "q", "input": "x", "output": "A"}, "q\n\nx"),
    "alpaca_empty_output": ({"instruction": "q", "output": ""}, {"instruction": "q", "output": "A"}, "q"),
    "chatglm": ({"prompt": "q", "response": ""}, {"prompt": "q", "response": "A"}, "q"),
    "chatglm_missing": ({"prompt": "q", "history": [["h", "i"]]},
                        {"prompt": "q", "response": "A", "history": [["h", "i"]]}, "q"),
    "adgen": ({"content": "q"}, {"content": "q", "summary": "A"}, "q"),
    "context_target": ({"context": "Instruction: q\nAnswer: "}, {"context": "Instruction: q\nAnswer: ", "target": "A"},
                       "Instruction: q\nAnswer: "),
    "firefly": ({"kind": "K", "input": "q"}, {"kind": "K", "input": "q", "target": "A"}, "q"),
    "firefly_multiturn": ({"conversation": [{"human": "h", "assistant": "i"}, {"human": "q"}]},
                          {"conversation": [{"human": "h", "assistant": "i"}, {"human": "q", "assistant": "A"}]}, "q"),
    "belle_target": ({"input": "q"}, {"input": "q", "target": "A"}, "q"),
    "belle_transcript": ({"instruction": "Human: h\nAssistant: i\nHuman: q\nAssistant:"},
                         {"instruction": "Human: h\nAssistant: i\nHuman: q\nAssistant:", "output": "A"}, "q"),
    "sharegpt_ends_with_human": ({"conversations": [{"from": "human", "value": "q"}]},
                                 {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "A"}]},
                                 "q"),
    "sharegpt_empty_answer": ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]},
                              {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "A"}]},
                              "q"),
    "instruction_text_end": ({"text": "### Instruction:\nq\n\n### Response:\nEND\n"},
                             {"text": "### Instruction:\nq\n\n### Response:\nA\nEND\n"}, "q"),
    "instruction_text_no_response": ({"text": "### Instruction:\nq\n"},
                                     {"text": "### Instruction:\nq\n\n### Response:\nA\n"}, "q"),
    "canonical_ends_with_user": ({"messages": [{"role": "user", "content": "q"}]},
                                 {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]},
                                 "q"),
    "canonical_empty_answer": ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
                               {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]},
                               "q"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reply_is_optional_in_every_format(tmp_path, case):
    without, with_reply, prompt = CASES[case]
    (conv,) = _read(tmp_path, [without])
    assert conv.reference is None and conv.messages[-1].role == "user"
    assert conv.messages[-1].content == prompt and conv.prompt == conv.messages
    (conv,) = _read(tmp_path, [with_reply])
    assert conv.reference == "A" and conv.messages[-2].content == prompt
    assert _shape(conv)[:-1] == [(m.role, m.content) for m in conv.prompt]


def test_a_file_mixes_records_with_and_without_replies(tmp_path):
    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2"}, {"instruction": "q3", "output": ""}]
    convs = _read(tmp_path, rows)
    assert [c.reference for c in convs] == ["a1", None, None]


def test_alpaca_without_output_keeps_instruction_and_input(tmp_path):
    (conv,) = _read(tmp_path, [{"instruction": "Translate.", "input": "Good morning", "category": "translate"}])
    assert conv.messages[-1].to_dict() == {"role": "user", "content": "Translate.\n\nGood morning",
                                           "instruction": "Translate.", "input": "Good morning"}
    assert conv.metadata == {"category": "translate", "source": "in.jsonl", "index": 0}


def test_metadata_as_convert_writes_it(tmp_path):
    rows = [{"kind": "Couplet", "input": "q", "target": "a"}, {"kind": "Poem", "input": "q2", "id": 7}]
    convs = _read(tmp_path, rows)
    assert [c.metadata for c in convs] == [{"kind": "Couplet", "source": "in.jsonl", "index": 0, "category": "Couplet"},
                                           {"kind": "Poem", "id": 7, "source": "in.jsonl", "index": 1,
                                            "category": "Poem"}]


def test_forced_format_and_limit(tmp_path):
    rows = [{"instruction": "Human: q\nAssistant:", "output": ""}] * 3
    convs = _read(tmp_path, rows, fmt_name="alpaca", limit=2)
    assert len(convs) == 2 and convs[0].messages[-1].content == "Human: q\nAssistant:"
    assert _read(tmp_path, rows)[0].messages[-1].content == "q"  # detected as BELLE: the transcript is split


def test_errors_name_file_and_line(tmp_path):
    with pytest.raises(UserError, match=r"in\.jsonl:2: empty 'instruction' and 'input'"):
        _read(tmp_path, [{"instruction": "q"}, {"instruction": " ", "output": "a"}])
    with pytest.raises(UserError, match=r"in\.jsonl:1: messages\[0\]: roles out of order"):
        _read(tmp_path, [{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}])
    with pytest.raises(UserError, match=r"in\.jsonl:1: the conversation has no user message"):
        _read(tmp_path, [{"conversations": [{"from": "gpt", "value": ""}]}])
    with pytest.raises(UserError, match="cannot detect the dataset format"):
        _read(tmp_path, [{"question": "q"}])
    with pytest.raises(UserError, match="--format nope: unknown format"):
        _read(tmp_path, [{"instruction": "q"}], fmt_name="nope")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(UserError, match=r"empty\.json: no records"):
        read_conversations(empty, fmt_name="alpaca")


def test_convert_still_requires_the_reply(tmp_path):
    from instructglm.convert import ConvertConfig, convert_files

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "q", "response": ""}) + "\n")
    with pytest.raises(UserError, match=r"in\.jsonl:1: empty 'response'"):
        convert_files(ConvertConfig(inputs=[str(src)], output=str(tmp_path / "out.jsonl")))


def test_records_with_replies_read_exactly_as_convert_writes_them(tmp_path):
    from pathlib import Path

    from instructglm.convert import ConvertConfig, convert_files

    for src in sorted((Path(__file__).parent.parent / "data" / "formats").iterdir()):
        out = tmp_path / f"{src.stem}.jsonl"
        convert_files(ConvertConfig(inputs=[str(src)], output=str(out)))
        written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [c.to_json() for c in read_conversations(src)] == written, src.name
