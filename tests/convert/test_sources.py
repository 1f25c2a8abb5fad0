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


def test_parse_line_is_the_one_parser_of_json_lines():
    from instructglm.convert.sources import BadInput, parse_line

    assert parse_line(b'  {"a": 1}\n') == {"a": 1} and parse_line(b"  \n") is None
    for raw, words in [(b'{"a": ' + b"1" * 4301 + b"}", "4301 digits"), (b'{"a": ', "invalid JSON"),
                       (b'"\xff"', "not valid UTF-8"), (b"[" * 100000, "nested too deeply")]:
        bad = parse_line(raw)
        assert isinstance(bad, BadInput) and words in bad.reason, (raw[:20], bad)
    assert parse_line(b'{"a": ' + b"1" * 4300 + b"}")["a"] > 0  # the limit itself is read

    def refuses(text):
        raise ValueError("the fast parser says no")

    assert parse_line(b'{"a": 2}', fast_loads=refuses) == {"a": 2}  # the standard library decides
    assert parse_line(b'{"a": 2}', fast_loads=lambda text: "fast") == "fast"


def test_long_integer_in_a_json_array_rejects_that_record_only(tmp_path):
    from instructglm.convert.sources import BadInput, scan_records

    p = tmp_path / "a.json"
    p.write_text('[{"a": 1},\n {"n": ' + "7" * 5000 + '},\n {"b": 2}]')
    items = list(scan_records(p))
    assert [line for line, _ in items] == [1, 2, 3]
    assert isinstance(items[1][1], BadInput) and "5000 digits" in items[1][1].reason
    assert items[2][1] == {"b": 2}
