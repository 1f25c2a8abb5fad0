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


def test_atomic_dir_follows_symlinks_and_refuses_files(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "old").write_text("x")
    link = tmp_path / "link"
    link.symlink_to("real")
    with atomic_dir(link) as tmp:
        (tmp / "new").write_text("y")
    assert link.is_symlink() and [p.name for p in (tmp_path / "real").iterdir()] == ["new"]
    (tmp_path / "file").write_text("keep")
    with pytest.raises(UserError, match="exists and is not a directory"):
        with atomic_dir(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link", "real"]


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path):
    import errno

    target = tmp_path / "out.jsonl"
    target.write_text("previous")
    with pytest.raises(UserError, match=f"no space left on device writing {target}"):
        with atomic_file(target) as f:
            f.write("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(UserError, match="file too large"):
        with atomic_dir(tmp_path / "d") as tmp:
            raise OSError("IOError: File too large")  # pyarrow's kind: no errno, the system's words
    with pytest.raises(UserError, match=f"no space left on device writing {tmp_path / 'd' / 'stats.json'}$"):
        with atomic_dir(tmp_path / "d") as tmp:
            with atomic_file(tmp / "stats.json") as f:
                raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    with pytest.raises(ValueError):  # any other error keeps its own type
        with atomic_file(target) as f:
            raise ValueError("not a disk problem")


def test_json_output_has_null_for_nan_and_infinity(tmp_path):
    import json
    import math

    from instructglm.files import dumps, write_json

    rec = {"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": "NaN"}
    assert json.loads(dumps(rec)) == {"a": None, "b": [1.5, None, {"c": None}], "d": "NaN"}
    write_json(tmp_path / "x.json", rec)
    write_jsonl(tmp_path / "x.jsonl", [rec])
    for name in ("x.json", "x.jsonl"):
        text = (tmp_path / name).read_text()
        assert "Infinity" not in text and json.loads(text)["b"][1] is None


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old")
    target.chmod(0o600)
    write_jsonl(target, [{"a": 1}])
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == '{"a": 1}\n'
