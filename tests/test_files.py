import os
import stat

import pytest

from instructglm.errors import UserError
from instructglm.files import atomic_dir, atomic_file, iter_jsonl, write_jsonl


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as f:
        f.write("ok")
    assert target.read_text() == "ok" and len(list(tmp_path.iterdir())) == 1


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target, marker=".complete") as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in target.iterdir()) == [".complete", "a"]
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == [".complete", "a"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_results_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "f.jsonl", [{"a": 1}])
        with atomic_dir(tmp_path / "d"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.jsonl").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_iter_jsonl_names_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    it = iter_jsonl(p)
    assert next(it) == (1, {"a": 1})
    with pytest.raises(UserError, match=f"{p}:3: invalid JSON"):
        next(it)
