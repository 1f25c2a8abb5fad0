"""Damaged input through the real CLI: one line naming the file (and line), exit status 2.

Families: (1) integers longer than Python's 4300-digit limit in data files (``convert``, also with
``--on-error skip`` where the record becomes a ``FILE:LINE`` reject, ``tokenize``, ``infer``);
(2) damaged tokenized datasets (truncated, missing or changed arrow file, broken ``state.json`` or
``manifest.json``): ``train`` stops at load naming the directory and "run 'instructglm tokenize'
again", and ``tokenize`` redoes such a dataset instead of calling it up to date; (3) ``tokenize
--show`` prints control characters from the data escaped; (4) JSON output never holds NaN.
"""

import json
import os
import shutil

import pytest

from test_bad_input import assert_one_error as one_error  # (tests/ is on the path: conftest.py)
from test_bad_input import run_cli

LONG = "9" * 5000
NO_MODEL = "/nonexistent/model-dir"


def conversation(user: str, reply: str, **extra) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                       **extra})


# ------------------------------------------------------------------------------------------ long integers


@pytest.mark.parametrize("name,content,line", [
    ("a.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d", "n": ' + LONG + "}\n", 2),
    ("a.json", '[\n{"instruction": "a", "output": "b", "n": -' + LONG + '},\n{"instruction": "c", "output": "d"}\n]\n',
     2),
])
def test_convert_long_integer(tmp_path, capsys, name, content, line):
    src = tmp_path / name
    src.write_text(content)
    out = tmp_path / "out" / "o.jsonl"
    code, _, err = run_cli(capsys, "convert", src, "-o", out)
    assert code == 2
    one_error(err, f"{name}:{line}:", "an integer with 5000 digits")
    assert not out.parent.exists() or not any(out.parent.iterdir())
    code, _, err = run_cli(capsys, "convert", src, "-o", out, "--on-error", "skip")
    assert code == 0, err
    assert "Traceback" not in err
    assert len(out.read_text().splitlines()) == 1  # the good record, also after the bad one in an array
    (reject,) = [json.loads(x) for x in (out.parent / "o.rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == line and "5000 digits" in reject["reason"]


def test_tokenize_long_integer(tmp_path, capsys, tiny_models):
    src = tmp_path / "c.jsonl"
    src.write_text(conversation("hi", "hello") + "\n" + conversation("a", "b")[:-1] + ', "n": ' + LONG + "}\n")
    code, _, err = run_cli(capsys, "tokenize", src, "-o", tmp_path / "tok", "--model", tiny_models("llama"))
    assert code == 2
    one_error(err, "c.jsonl:2:", "5000 digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_infer_long_integer(tmp_path, capsys):
    src = tmp_path / "x.jsonl"
    src.write_text('{"instruction": "a"}\n{"instruction": "b", "id": ' + LONG + "}\n")
    code, _, err = run_cli(capsys, "infer", "--data", src, "-o", tmp_path / "p.jsonl", "--model", NO_MODEL)
    assert code == 2
    one_error(err, "x.jsonl:2:", "5000 digits")


# ------------------------------------------------------------------------------------------ NaN in JSON


def test_json_output_holds_no_nan(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text('{"instruction": "a", "output": "b", "score": NaN, "w": Infinity, "v": -Infinity}\n')
    code, _, err = run_cli(capsys, "convert", src, "-o", tmp_path / "o.jsonl")
    assert code == 0, err
    text = (tmp_path / "o.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    rec = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
    assert rec["score"] is None and rec["w"] is None and rec["v"] is None


# ------------------------------------------------------------------------------------------ damaged datasets


def _arrow(folder):
    (name,) = [p for p in folder.iterdir() if p.suffix == ".arrow"]
    return name


def _truncate(d):
    p = _arrow(d)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_bytes(d):
    """Random bytes in place, the size unchanged (what bit rot or a bad copy does)."""
    p = _arrow(d)
    raw = bytearray(p.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = os.urandom(64)
    if raw == p.read_bytes():  # (the odds are nil, but a test must not pass by chance)
        raw[middle] ^= 0xFF
    p.write_bytes(bytes(raw))


DAMAGE = {
    "truncated arrow": (_truncate, "bytes"),
    "missing arrow": (lambda d: _arrow(d).unlink(), "is missing"),
    "changed arrow": (_flip_bytes, "checksum"),
    "broken state.json": (lambda d: (d / "state.json").write_text('{"_data_files": ['), "state.json"),
    "broken manifest.json": (lambda d: (d / "manifest.json").write_text("{"), "manifest.json"),
}


@pytest.fixture
def fresh(tmp_path, capsys, tiny_models):
    """A tokenized dataset of our own (tests damage it) and the canonical file it came from."""
    rows = "".join(conversation(f"Question {i}?", f"Answer {i}.") + "\n" for i in range(24))
    src = tmp_path / "c.jsonl"
    src.write_text(rows)
    out = tmp_path / "tok"
    code, _, err = run_cli(capsys, "tokenize", src, "-o", out, "--model", tiny_models("llama"))
    assert code == 0, err
    return src, out


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_dataset_stops_train_with_one_line(tmp_path, capsys, tiny_models, fresh, damage):
    _, tok = fresh
    spoil, words = DAMAGE[damage]
    spoil(tok)
    code, _, err = run_cli(capsys, "train", "--dataset", tok, "-o", tmp_path / "run", "--model",
                           tiny_models("llama"), "--max-steps", "1", "--save-steps", "0")
    assert code == 2
    one_error(err, str(tok), words, "run 'instructglm tokenize' again")
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_tokenize_redoes_a_damaged_dataset(tmp_path, capsys, tiny_models, fresh, damage):
    from instructglm.tokenize.manifest import damage as find_damage

    src, tok = fresh
    model = tiny_models("llama")
    code, out, _ = run_cli(capsys, "tokenize", src, "-o", tok, "--model", model)
    assert code == 0 and "up to date" in out  # the counterpart: an intact dataset is reused
    DAMAGE[damage][0](tok)
    assert find_damage(tok) is not None
    code, out, err = run_cli(capsys, "tokenize", src, "-o", tok, "--model", model)
    assert code == 0, err
    assert "up to date" not in out and "24 rows written" in out
    assert find_damage(tok) is None


def test_a_dataset_without_checksums_is_still_checked(tmp_path, tokenized):
    """Datasets made by ``save_to_disk`` (no checksums.json) still get the structural checks."""
    from instructglm.errors import UserError
    from instructglm.tokenize.manifest import CHECKSUMS, check_whole

    copy = tmp_path / "tok"
    shutil.copytree(tokenized(), copy)
    (copy / CHECKSUMS).unlink()
    check_whole(copy)
    _arrow(copy).unlink()
    with pytest.raises(UserError, match="is missing.*run 'instructglm tokenize' again"):
        check_whole(copy)


# ------------------------------------------------------------------------------------------ --show


def test_show_escapes_control_characters_from_data(tmp_path, capsys, tiny_models):
    src = tmp_path / "c.jsonl"
    src.write_text(conversation("clear\x1b[2J\x1b]0;title\x07 now\r", "bell\x07 \u202eevil") + "\n")
    code, out, err = run_cli(capsys, "tokenize", src, "-o", tmp_path / "tok", "--model", tiny_models("llama"),
                             "--show", "1")
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out and "\\x07" in out and "\\r" in out and "\\u202e" in out
