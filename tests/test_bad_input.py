"""Malformed input through the real CLI: one clear line naming the file and line (or field), exit
status 2, no traceback, and nothing left in the output directory; with ``--on-error skip`` the good
records of the file still come through.

The corpus is ``tests/data/bad/`` (see the table below); the 50 MB line is made at test time.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instructglm.cli import main
from instructglm.record import read_canonical

BAD = Path(__file__).parent / "data" / "bad"

# file, where the error is (FILE:LINE, or FILE for a whole-file problem), words in the message,
# records that survive --on-error skip (None: nothing in the file is usable, skip fails too),
# records rejected with --on-error skip.
CASES = [
    ("truncated_array.json", ":3:", "invalid JSON in the record starting here", 1, 1),
    ("truncated_line.jsonl", ":2:", "invalid JSON: Unterminated string", 2, 1),
    ("invalid_utf8.jsonl", ":2:", "not valid UTF-8", 2, 1),
    ("invalid_utf8.json", ":3:", "not valid UTF-8", 2, 1),
    ("latin1.json", ":1:", "not valid UTF-8", None, 0),
    ("utf16.jsonl", ":1:", "not valid UTF-8", None, 0),
    ("binary.bin", ":1:", "not valid UTF-8", None, 0),
    ("nul_bytes.jsonl", ":2:", "invalid JSON: Invalid control character", 1, 1),
    ("wrong_type_output.jsonl", ":2:", "field 'output' must be text, got int", 2, 1),
    ("dict_as_text.jsonl", ":3:", "field 'instruction' must be text, got dict", 2, 1),
    ("list_as_text.json", ":14:", "conversations[0].value must be text, got list", 1, 1),
    ("nested_900.jsonl", ":2:", "field 'instruction' must be text, got int", 1, 1),
    ("missing_field.jsonl", ":2:", "missing field 'response'", 2, 1),
    ("null_field.jsonl", ":1:", "missing field 'target'", 1, 1),
    ("empty_field.jsonl", ":2:", "empty 'summary'", 1, 1),
    ("history_not_list.json", ":7:", "field 'history' must be a list", 1, 1),
    ("firefly_turn_missing.jsonl", ":2:", "conversation[0]: missing field 'assistant'", 1, 1),
    ("seed_text_no_response.jsonl", ":2:", "no '### Response:' block", 1, 1),
    ("roles_out_of_order.jsonl", ":2:", "messages[1]: roles out of order", 1, 1),
    ("system_not_first.jsonl", ":1:", "a system message may only come first", 1, 1),
    ("ends_with_user.jsonl", ":2:", "the last message must be the assistant's response", 1, 1),
    ("unknown_role.jsonl", ":1:", "messages[0].role must be one of", 1, 1),
    ("messages_not_list.jsonl", ":3:", "'messages' must be a non-empty list", 2, 1),
    ("unknown_speaker.json", ":14:", "conversations[0].from must be one of", 1, 1),
    ("not_objects.json", ":7:", "expected a JSON object, got str", 2, 2),
    ("top_level_object.json", ":1:", "invalid JSON", None, 0),
    ("scalars_only.jsonl", "", "cannot detect the dataset format", None, 0),
    ("empty.jsonl", "", "file is empty", None, 0),
    ("whitespace_only.json", "", "file is empty", None, 0),
    ("deeply_nested.json", ":1:", "nested too deeply", None, 0),
    ("deeply_nested.jsonl", ":2:", "nested too deeply", 2, 1),
]


def run_cli(capsys, *args):
    code = main(["-q", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(err, *words):
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def test_the_corpus_is_what_the_table_says():
    names = {p.name for p in BAD.iterdir()}
    listed = {c[0] for c in CASES} | {"bom_ok.json", "bom_ok.jsonl", "trailing_comma.json"}
    assert listed <= names and len(CASES) >= 20


@pytest.mark.parametrize("name,line,words,good,rejected", CASES, ids=[c[0] for c in CASES])
def test_convert_bad_file(tmp_path, capsys, name, line, words, good, rejected):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.jsonl"
    code, _, err = run_cli(capsys, "convert", BAD / name, "-o", out)
    assert code == 2
    assert_one_error(err, f"{name}{line}" if line else f"{name}: ", words)
    assert list(out_dir.iterdir()) == []  # neither OUT nor a temporary file

    code, stdout, err = run_cli(capsys, "convert", BAD / name, "-o", out, "--on-error", "skip")
    if good is None:
        assert code == 2
        assert_one_error(err, words)
        assert list(out_dir.iterdir()) == []
        return
    assert code == 0, err
    assert "Traceback" not in err
    records = [rec for _, rec in read_canonical(out)]  # every written record is valid canonical
    assert len(records) == good
    rejects = [json.loads(x) for x in (out_dir / "o.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == rejected
    assert words in rejects[0]["reason"] and rejects[0]["file"].endswith(name)
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.jsonl", "o.rejects.jsonl"]


@pytest.mark.parametrize("name,records", [("bom_ok.jsonl", 2), ("bom_ok.json", 2),
                                          ("trailing_comma.json", 1)])  # a trailing comma loses nothing
def test_bom_and_trailing_comma_are_accepted(tmp_path, capsys, name, records):
    code, _, err = run_cli(capsys, "convert", BAD / name, "-o", tmp_path / "o.jsonl")
    assert code == 0, err
    rows = [rec for _, rec in read_canonical(tmp_path / "o.jsonl")]
    assert len(rows) == records
    assert not rows[0].messages[0].content.startswith("\ufeff")


def test_fifty_megabyte_line(tmp_path, capsys):
    good = json.dumps({"instruction": "Name a colour.", "output": "Blue."})
    src = tmp_path / "huge.jsonl"
    with open(src, "w") as f:
        f.write(good + "\n")
        f.write('{"instruction": "Repeat.", "output": "' + "x" * (50 * 1024 * 1024) + '"}\n')
        f.write(good.replace("Blue", "Red") + "\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run_cli(capsys, "convert", src, "-o", out_dir / "o.jsonl")
    assert code == 2
    assert_one_error(err, "huge.jsonl:2:", "record is larger than 16 MB")
    assert list(out_dir.iterdir()) == []
    code, _, err = run_cli(capsys, "convert", src, "-o", out_dir / "o.jsonl", "--on-error", "skip")
    assert code == 0, err
    assert len(list(read_canonical(out_dir / "o.jsonl"))) == 2
    assert (out_dir / "o.rejects.jsonl").stat().st_size < 1024 * 1024  # the rejected text is clipped


def test_unknown_format_directory_and_missing_file(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(capsys, "convert", BAD / "bom_ok.jsonl", "--format", "nope", "-o", out)
    assert code == 2
    assert_one_error(err, "--format nope: unknown format")
    code, _, err = run_cli(capsys, "convert", BAD, "-o", out)
    assert code == 2
    assert_one_error(err, "is a directory")
    code, _, err = run_cli(capsys, "convert", tmp_path / "nothing.jsonl", "-o", out)
    assert code == 2
    assert_one_error(err, "nothing.jsonl: file not found")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["file/o.jsonl", "dir", "/proc/o.jsonl", "/proc/self/nope/o.jsonl"])
def test_unwritable_output(tmp_path, capsys, target):
    (tmp_path / "file").write_text("a regular file, not a directory\n")
    (tmp_path / "dir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    out = target if target.startswith("/") else tmp_path / target
    code, _, err = run_cli(capsys, "convert", BAD / "bom_ok.jsonl", "-o", out)
    assert code == 2
    assert_one_error(err, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not any((tmp_path / "dir").iterdir())


def _subprocess(*args, cwd):
    return subprocess.run([sys.executable, "-m", "instructglm", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_through_a_real_process(tmp_path):
    """The same guarantees with the installed entry point (python -m instructglm)."""
    (tmp_path / "file").write_text("x")
    for args, words in [
        (["convert", BAD / "binary.bin", "-o", "o.jsonl"], "binary.bin:1: not valid UTF-8"),
        (["convert", BAD / "truncated_line.jsonl", "-o", "o.jsonl"], "truncated_line.jsonl:2: invalid JSON"),
        (["convert", BAD / "deeply_nested.json", "-o", "o.jsonl"], "deeply_nested.json:1: invalid JSON"),
        (["convert", BAD / "bom_ok.jsonl", "-o", "file/o.jsonl"], "file/o.jsonl: cannot write output"),
    ]:
        proc = _subprocess(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert_one_error(proc.stderr, words)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    proc = _subprocess("convert", BAD / "truncated_line.jsonl", "-o", "o.jsonl", "--on-error", "skip", cwd=tmp_path)
    assert proc.returncode == 0 and "wrote 2 records" in proc.stdout, proc.stderr


# ------------------------------------------------------------------------------------------ other stages


def test_tokenize_bad_input(tmp_path, capsys, tiny_models):
    model = tiny_models("llama")
    good = ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    (tmp_path / "canon.jsonl").write_text(good + '{"messages": [{"role": "user", "content": "a"}, '
                                          '{"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}\n')
    (tmp_path / "file").write_text("x")
    (tmp_path / "good.jsonl").write_text(good)
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, words in [
        ([BAD / "bom_ok.jsonl", "-o", tmp_path / "tok"], "bom_ok.jsonl:1: not a canonical record"),
        ([tmp_path / "canon.jsonl", "-o", tmp_path / "tok"], "canon.jsonl:2: messages[1]: roles out of order"),
        ([tmp_path / "missing.jsonl", "-o", tmp_path / "tok"], "missing.jsonl: file not found"),
        ([BAD / "binary.bin", "-o", tmp_path / "tok"], "binary.bin:1: not valid UTF-8"),
        ([tmp_path / "good.jsonl", "-o", tmp_path / "file" / "tok"], "file/tok: cannot create"),
    ]:
        code, _, err = run_cli(capsys, "tokenize", *args, "--model", model)
        assert code == 2
        assert_one_error(err, words)
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no dataset dir, no temporary dir


NO_MODEL = "/nonexistent/model-dir"


@pytest.mark.parametrize("extra,words", [
    (["lora_rnk=4"], "unknown config key 'lora_rnk'"),
    (["--learning-rate", "fast"], "'learning_rate': expected float, got 'fast'"),
    (["--method", "freeze", "--load-in", "8bit"], "load_in=8bit"),
    (["--method", "full", "--load-in", "4bit"], "load_in=4bit"),
    (["--eval-steps", "5"], "eval_steps=5: there is no eval set"),
    (["--pack-length", "0"], "pack_length: must be at least 1"),
    (["--lora-dropout", "1.5"], "lora_dropout"),
    (["--method", "bitfit"], "'method': 'bitfit' is not one of"),
    (["--save-steps", "-1"], "save_steps: must be >= 0"),
])
def test_train_config_errors_come_before_the_model(tmp_path, capsys, extra, words):
    code, _, err = run_cli(capsys, "train", "--dataset", tmp_path / "nowhere", "-o", tmp_path / "run",
                           "--model", NO_MODEL, *extra)
    assert code == 2
    line = assert_one_error(err, words)
    assert NO_MODEL not in line and "nowhere" not in line  # the config was checked first
    assert not (tmp_path / "run").exists()


def test_train_yaml_errors_name_file_and_key(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("lora_rank: 4\nlearning_rat: 0.1\n")
    code, _, err = run_cli(capsys, "train", tmp_path / "c.yaml", "--dataset", "d", "-o", "o", "--model", NO_MODEL)
    assert code == 2
    assert_one_error(err, "c.yaml: unknown config key 'learning_rat'")
    (tmp_path / "c.yaml").write_text("lora_rank: [4\n")
    code, _, err = run_cli(capsys, "train", tmp_path / "c.yaml", "--dataset", "d", "-o", "o", "--model", NO_MODEL)
    assert code == 2
    assert_one_error(err, "c.yaml:", "invalid YAML")


def test_a_good_config_reaches_the_model(tmp_path, capsys, tiny_models):
    """The counterpart of the tests above: with a valid config the missing model is what is reported."""
    code, _, err = run_cli(capsys, "train", "--dataset", tmp_path / "nowhere", "-o", tmp_path / "run",
                           "--model", NO_MODEL)
    assert code == 2
    assert_one_error(err, NO_MODEL)


def test_infer_missing_adapter_and_merge_ptuning(tmp_path, capsys):
    code, _, err = run_cli(capsys, "infer", "--data", BAD / "bom_ok.jsonl", "-o", tmp_path / "p.jsonl",
                           "--model", NO_MODEL, "--adapter", tmp_path / "no-adapter")
    assert code == 2
    assert_one_error(err, "no-adapter", "not found")
    assert not (tmp_path / "p.jsonl").exists()
    adapter = tmp_path / "pt"
    adapter.mkdir()
    (adapter / "instructglm.json").write_text(json.dumps({"method": "ptuning", "base_model": NO_MODEL}))
    code, _, err = run_cli(capsys, "merge", "--adapter", adapter, "-o", tmp_path / "merged", "--model", NO_MODEL)
    assert code == 2
    assert_one_error(err, "ptuning", "cannot be merged")
    assert not (tmp_path / "merged").exists()


# ------------------------------------------------------------------------------------------ safe loading

SRC = Path(__file__).parent.parent / "src" / "instructglm"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal"}
TORCH_SAVE_ALLOWED = {"train/checkpoint.py"}  # optimizer/scheduler state, read back with weights_only=True


def _calls(tree):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def _is_true(node) -> bool:
    import ast

    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loading(root: Path) -> list[str]:
    """Places in the source that could unpickle or run code from a file we did not write."""
    import ast

    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            found += [f"{rel}:{node.lineno}: imports {n}" for n in names if n in PICKLE_MODULES]
        for call, func, kw in _calls(tree):
            where = f"{rel}:{call.lineno}: {func}"
            if func.endswith("torch.load") and not _is_true(kw.get("weights_only")):
                found.append(f"{where} without weights_only=True")
            if func.endswith("torch.save") and rel not in TORCH_SAVE_ALLOWED:
                found.append(f"{where} (write safetensors instead)")
            if _is_true(kw.get("trust_remote_code")):
                found.append(f"{where} with trust_remote_code=True")
            if "safe_serialization" in kw and not _is_true(kw["safe_serialization"]):
                found.append(f"{where} with safe_serialization off")
            if _is_true(kw.get("allow_pickle")):
                found.append(f"{where} with allow_pickle=True")
            if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                found.append(f"{where} (use yaml.safe_load)")
    return found


def test_no_unsafe_loading_in_the_source():
    assert SRC.is_dir() and len(list(SRC.rglob("*.py"))) > 20
    assert unsafe_loading(SRC) == []


def test_the_unsafe_loading_check_finds_what_it_looks_for(tmp_path):
    (tmp_path / "bad.py").write_text(
        "import pickle\nimport torch\nfrom transformers import AutoModel\n"
        "torch.load('x.pt')\ntorch.load('y.pt', weights_only=False)\ntorch.load('z.pt', weights_only=True)\n"
        "AutoModel.from_pretrained('m', trust_remote_code=True)\nAutoModel.from_pretrained('m', trust_remote_code=flag)\n"
        "torch.save({}, 'w.pt')\nmodel.save_pretrained('d', safe_serialization=False)\n")
    found = unsafe_loading(tmp_path)
    assert [f.split(":")[1] for f in found] == ["1", "4", "5", "7", "9", "10"], found
