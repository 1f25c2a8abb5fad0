"""The shape the redesign promised (issue 15), kept by a test: no module in src/ over MAX_MODULE lines,
no function over MAX_FUNCTION lines unless a comment in its first lines says why ("long because"),
and nothing but re-exports in a package's __init__.py."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "instructglm"
MAX_MODULE = 460
MAX_FUNCTION = 80


def _modules():
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_is_too_long():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE}
    assert not long, f"modules over {MAX_MODULE} lines: {long}"


def test_no_function_is_too_long_without_a_reason():
    long = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                head = "\n".join(lines[node.lineno - 1:node.lineno + 6])
                if size > MAX_FUNCTION and "long because" not in head:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, "functions over %d lines without a reason: %s" % (MAX_FUNCTION, long)


def test_package_inits_only_re_export():
    for init in SRC.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        for node in tree.body:
            allowed = (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign, ast.AnnAssign, ast.FunctionDef)
            assert isinstance(node, allowed), f"{init.relative_to(SRC)}:{node.lineno}: logic in __init__.py"
            if isinstance(node, ast.FunctionDef):  # only the lazy re-export hook of the top package
                assert init.parent == SRC and node.name == "__getattr__", f"{init.relative_to(SRC)}: {node.name}"


def test_the_check_itself_catches_a_long_function(tmp_path, monkeypatch):
    pkg = tmp_path / "instructglm"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n" + "    x = 1\n" * (MAX_FUNCTION + 1))
    monkeypatch.setattr(__import__(__name__), "SRC", pkg)
    try:
        test_no_function_is_too_long_without_a_reason()
    except AssertionError as e:
        assert "m.py:1 f" in str(e)
    else:
        raise AssertionError("a long function went unnoticed")
