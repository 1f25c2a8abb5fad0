import json

import pytest

from sample_data import ALPACA_ROWS
from instructglm.convert.convert import ConvertConfig, convert_files
from instructglm.errors import UserError


def _convert(tmp_path, rows_text, name="in.json", **kw):
    src = tmp_path / name
    src.write_text(rows_text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = convert_files(ConvertConfig(inputs=[str(src)], output=str(out), **kw))
    return result, out


def test_alpaca_to_canonical_keeps_instruction_and_input(tmp_path):
    result, out = _convert(tmp_path, json.dumps(ALPACA_ROWS, ensure_ascii=False))
    assert result["records"] == 4
    text = out.read_text(encoding="utf-8")
    assert "把下面的英文" in text and "\\u" not in text  # Chinese stays readable
    recs = [json.loads(line) for line in text.splitlines()]
    assert recs[0]["messages"] == [{"role": "user", "content": "Who are you?"},
                                   {"role": "assistant", "content": "I am a tiny model."}]
    user = recs[1]["messages"][0]
    assert user == {"role": "user", "content": "把下面的英文转换成大写字母\n\ngood morning",
                    "instruction": "把下面的英文转换成大写字母", "input": "good morning"}
    assert recs[1]["category"] == "upper" and recs[1]["source"] == "in.json" and recs[1]["index"] == 1


def test_alpaca_jsonl_with_system_and_history(tmp_path):
    row = {"instruction": "And Germany?", "input": "", "output": "Berlin", "system": "Be brief.",
           "history": [["Capital of France?", "Paris"]]}
    _, out = _convert(tmp_path, json.dumps(row) + "\n", name="in.jsonl")
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert rec["messages"][2]["content"] == "Paris"


@pytest.mark.parametrize("row,words", [
    ({"instruction": "q", "input": ""}, "missing field 'output'"),
    ({"instruction": "q", "output": ""}, "empty 'output'"),
    ({"instruction": {"text": "q"}, "output": "a"}, "field 'instruction' must be text, got dict"),
    ({"instruction": "q", "output": ["a"]}, "field 'output' must be text, got list"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history[0]"),
])
def test_bad_alpaca_record_names_file_and_line(tmp_path, row, words):
    good = {"instruction": "q", "input": "", "output": "a"}
    text = "\n".join(json.dumps(r) for r in [good, good, row]) + "\n"
    with pytest.raises(UserError) as e:
        _convert(tmp_path, text, name="bad.jsonl", format="alpaca")
    assert f"bad.jsonl:3: {words}" in str(e.value)
    assert not (tmp_path / "out.jsonl").exists()  # no partial output


def test_unknown_format_is_reported(tmp_path):
    with pytest.raises(UserError, match="cannot detect the dataset format"):
        _convert(tmp_path, json.dumps({"foo": 1}) + "\n", name="x.jsonl")


def test_glob_and_several_files(tmp_path):
    for i in range(2):
        (tmp_path / f"part{i}.json").write_text(json.dumps(ALPACA_ROWS[:2]), encoding="utf-8")
    out = tmp_path / "all.jsonl"
    result = convert_files(ConvertConfig(inputs=[str(tmp_path / "part*.json")], output=str(out)))
    assert result["records"] == 4 and len(result["files"]) == 2


def test_canonical_input_passes_through(tmp_path):
    _, first = _convert(tmp_path, json.dumps(ALPACA_ROWS, ensure_ascii=False))
    second = tmp_path / "again.jsonl"
    convert_files(ConvertConfig(inputs=[str(first)], output=str(second)))
    a = [json.loads(x) for x in first.read_text().splitlines()]
    b = [json.loads(x) for x in second.read_text().splitlines()]
    assert [r["messages"] for r in a] == [r["messages"] for r in b]
