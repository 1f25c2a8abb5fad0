import pytest

from instructglm.convert.sources import read_records
from instructglm.errors import UserError


def test_json_array_reports_start_line_of_each_record(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\n  {"a": 1},\n\n  {"b": [1,\n 2]},\n  {"c": "中文"}\n]\n', encoding="utf-8")
    assert [(line, rec) for line, rec in read_records(p)] == [(2, {"a": 1}), (4, {"b": [1, 2]}), (6, {"c": "中文"})]


def test_jsonl_with_bom_and_blank_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"b": "\xe4\xb8\xad"}\n')
    assert list(read_records(p)) == [(1, {"a": 1}), (3, {"b": "中"})]


@pytest.mark.parametrize("content,line,words", [
    (b'{"a": 1}\n{"a": \n', 2, "invalid JSON"),
    (b'{"a": 1}\n{"a": "\xff\xfe"}\n', 2, "not valid UTF-8"),
    (b'[\n {"a": 1},\n {"a": 2\n]', 3, "invalid JSON"),
    (b'[\n {"a": 1}\n {"a": 2}\n]', 3, "expected ','"),
])
def test_malformed_input_names_file_and_line(tmp_path, content, line, words):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(UserError) as e:
        list(read_records(p))
    assert f"{p}:{line}:" in str(e.value) and words in str(e.value)


def test_empty_missing_and_directory(tmp_path):
    (tmp_path / "empty.jsonl").write_text("  \n")
    for path, words in [(tmp_path / "empty.jsonl", "empty"), (tmp_path / "nope.json", "not found"),
                        (tmp_path, "directory")]:
        with pytest.raises(UserError, match=words):
            list(read_records(path))
