"""Output paths through the real CLI: nothing a writer is pointed at is destroyed.

Families: (1) paths that are not regular files (character devices, FIFOs, symlinks, dangling
symlinks) are written through or followed, never replaced; (2) paths that cannot take the output
(a directory for a file, a file for a directory, ``/proc``, ``/sys``) are one line naming the flag;
(3) an output that is an input (same file, through a symlink, the rejects file, a glob match, a
data file inside an output directory) is refused before anything is written; (4) a full disk or a
file size limit is one line, the temporary is removed and the previous output is intact.
"""

import errno
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from test_bad_input import assert_one_error as one_error  # (tests/ is on the path: conftest.py)
from test_bad_input import run_cli

GOOD = [{"instruction": f"Say {w}.", "output": w} for w in ("one", "two", "three")]
NO_MODEL = "/nonexistent/model-dir"


def data(path: Path, rows=GOOD) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def canonical_rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


# ------------------------------------------------------------------------------------------ written through


def test_inputs_that_are_not_what_they_should_be(tmp_path, capsys, tiny_models):
    """A device given as a data file, or a data file given as a tokenized dataset, is named for what it
    is: "file not found" would send the user looking for a file that is there."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "yo"}\n')
    code, _, err = run_cli(capsys, "convert", "/dev/null", "-o", tmp_path / "a.jsonl")
    assert code == 2
    one_error(err, "/dev/null: not a regular file")
    code, _, err = run_cli(capsys, "train", "--dataset", data, "-o", tmp_path / "out", "--model",
                           tiny_models("llama"), "--dry-run")
    assert code == 2
    one_error(err, "d.jsonl: not a tokenized dataset directory")


def test_dev_null_stays_a_character_device(tmp_path, capsys):
    before = os.stat("/dev/null")
    code, out, err = run_cli(capsys, "convert", data(tmp_path / "a.jsonl"), "-o", "/dev/null")
    assert code == 0, err
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(before.st_mode)
    assert not any(Path("/dev").glob(".null.*"))  # no temporary left beside it
    assert "wrote 3 records to /dev/null" in out


def test_fifo_is_written_through(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    code, _, err = run_cli(capsys, "convert", data(tmp_path / "a.jsonl"), "-o", fifo)
    reader.join(30)
    assert code == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert len(got[0].splitlines()) == 3 and json.loads(got[0].splitlines()[0])["messages"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "pipe"]


def test_symlinks_are_followed_and_stay_links(tmp_path, capsys):
    src = data(tmp_path / "a.jsonl")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "out.jsonl").write_text("old\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to("real/out.jsonl")
    dangling = tmp_path / "new.jsonl"
    dangling.symlink_to("real/created.jsonl")
    for out in (link, dangling):
        code, _, err = run_cli(capsys, "convert", src, "-o", out, "--on-error", "skip")
        assert code == 0, err
        assert out.is_symlink()
    assert canonical_rows(tmp_path / "real" / "out.jsonl") == 3
    assert canonical_rows(tmp_path / "real" / "created.jsonl") == 3
    assert os.readlink(dangling) == "real/created.jsonl"


def test_symlinked_output_directory_stays_a_link(tmp_path, capsys, tiny_models):
    src = tmp_path / "c.jsonl"
    assert run_cli(capsys, "convert", data(tmp_path / "a.jsonl"), "-o", src)[0] == 0
    link = tmp_path / "tok"
    link.symlink_to("elsewhere")  # dangling: the directory is created where it points
    code, _, err = run_cli(capsys, "tokenize", src, "-o", link, "--model", tiny_models("llama"))
    assert code == 0, err
    assert link.is_symlink() and (tmp_path / "elsewhere" / "manifest.json").is_file()


# ------------------------------------------------------------------------------------------ cannot take it


@pytest.mark.parametrize("target,words", [
    ("dir", "is a directory"),
    ("/proc/instructglm.jsonl", "under /proc"),
    ("/sys/instructglm.jsonl", "under /sys"),
    ("/proc/self/status", "under /proc"),
])
def test_file_outputs_that_cannot_take_a_file(tmp_path, capsys, target, words):
    (tmp_path / "dir").mkdir()
    out = target if target.startswith("/") else tmp_path / target
    code, _, err = run_cli(capsys, "convert", data(tmp_path / "a.jsonl"), "-o", out)
    assert code == 2
    one_error(err, f"--output {out}", words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "dir"]


@pytest.mark.parametrize("target,words", [
    ("file", "exists and is a file, not a directory"),
    ("/dev/null", "not a directory"),
    ("/proc/instructglm-tok", "under /proc"),
])
def test_directory_outputs_that_cannot_take_a_directory(tmp_path, capsys, tiny_models, target, words):
    src = data(tmp_path / "a.jsonl")
    (tmp_path / "file").write_text("keep me\n")
    out = target if target.startswith("/") else tmp_path / target
    code, _, err = run_cli(capsys, "tokenize", src, "-o", out, "--model", tiny_models("llama"))
    assert code == 2
    one_error(err, f"--output {out}", words)
    assert (tmp_path / "file").read_text() == "keep me\n"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_infer_output_checks_come_before_the_model(tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    src = data(tmp_path / "a.jsonl")
    code, _, err = run_cli(capsys, "infer", "--data", src, "-o", tmp_path / "dir", "--model", NO_MODEL)
    assert code == 2
    line = one_error(err, "--output", "is a directory")
    assert NO_MODEL not in line


# ------------------------------------------------------------------------------------------ output is an input


def test_convert_refuses_to_overwrite_an_input(tmp_path, capsys):
    src = data(tmp_path / "a.json")
    before = src.read_bytes()
    (tmp_path / "link.jsonl").symlink_to("a.json")
    os.link(src, tmp_path / "hard.jsonl")
    for out in (src, tmp_path / "link.jsonl", tmp_path / "hard.jsonl", tmp_path / "." / "a.json"):
        code, _, err = run_cli(capsys, "convert", src, "-o", out)
        assert code == 2
        one_error(err, f"--output {out}", "the same file as the input")
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "hard.jsonl", "link.jsonl"]


def test_rejects_file_landing_on_an_input(tmp_path, capsys):
    src = data(tmp_path / "o.rejects.jsonl")
    code, _, err = run_cli(capsys, "convert", src, "-o", tmp_path / "o.jsonl", "--on-error", "skip")
    assert code == 2
    one_error(err, "rejects file", "o.rejects.jsonl", "the same file as the input")
    assert canonical_rows(src) == 3 and not (tmp_path / "o.jsonl").exists()


def test_a_glob_that_matches_the_output_never_grows_it(tmp_path, capsys, monkeypatch):
    g = tmp_path / "g"
    g.mkdir()
    data(g / "a.jsonl", GOOD[:2])
    data(g / "b.jsonl", GOOD[2:])
    monkeypatch.chdir(tmp_path)
    results = [run_cli(capsys, "convert", "g/*.jsonl", "-o", "g/all.jsonl") for _ in range(3)]
    assert results[0][0] == 0
    for code, _, err in results[1:]:
        assert code == 2
        one_error(err, "--output g/all.jsonl", "matched by 'g/*.jsonl'")
    assert canonical_rows(g / "all.jsonl") == 3


def test_infer_refuses_its_data_file_as_output(tmp_path, capsys):
    src = data(tmp_path / "x.jsonl")
    before = src.read_bytes()
    code, _, err = run_cli(capsys, "infer", "--data", src, "-o", src, "--model", NO_MODEL)
    assert code == 2
    one_error(err, f"--output {src}", "the same file as the input")
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def test_tokenize_refuses_an_output_directory_holding_its_input(tmp_path, capsys, tiny_models):
    model = tiny_models("llama")
    src = tmp_path / "c.jsonl"
    assert run_cli(capsys, "convert", data(tmp_path / "a.jsonl"), "-o", src)[0] == 0
    out = tmp_path / "tok"
    assert run_cli(capsys, "tokenize", src, "-o", out, "--model", model)[0] == 0
    inside = out / "c.jsonl"
    inside.write_bytes(src.read_bytes())
    code, _, err = run_cli(capsys, "tokenize", inside, "-o", out, "--model", model, "--force")
    assert code == 2
    one_error(err, f"--output {out}", "inside the input")
    assert inside.read_bytes() == src.read_bytes()


# ------------------------------------------------------------------------------------------ full disk


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left on device"),
                                        (errno.EFBIG, "file too large for the file system or the file size limit"),
                                        (errno.EDQUOT, "disk quota exceeded")])
def test_disk_full_on_fsync_keeps_the_previous_output(tmp_path, capsys, monkeypatch, code, words):
    src = data(tmp_path / "a.jsonl")
    out = tmp_path / "o.jsonl"
    out.write_text("previous\n")

    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("instructglm.files.os.fsync", full)
    status, _, err = run_cli(capsys, "convert", src, "-o", out)
    assert status == 2
    one_error(err, f"{words} writing {out}")
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "o.jsonl"]  # no temporary left


SMALL_LIMIT = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from instructglm.cli import main
sys.exit(main(["-q", *sys.argv[2:]]))
"""


def _limited(limit: int, *args, cwd):
    return subprocess.run([sys.executable, "-c", SMALL_LIMIT, str(limit), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_file_size_limit_in_a_real_process(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG) as a full disk would."""
    rows = [{"instruction": f"Count to {i}.", "output": " ".join(map(str, range(i % 50 + 1)))} for i in range(400)]
    src = data(tmp_path / "big.jsonl", rows)
    out = tmp_path / "o.jsonl"
    out.write_text("previous\n")
    proc = _limited(16 * 1024, "convert", src, "-o", out, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    one_error(proc.stderr, "file too large", f"writing {out}")
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl", "o.jsonl"]


@pytest.mark.slow
def test_file_size_limit_while_tokenizing(tmp_path, tiny_models):
    rows = [{"messages": [{"role": "user", "content": f"Count to {i}."},
                          {"role": "assistant", "content": " ".join(map(str, range(i % 60 + 1)))}]} for i in range(600)]
    src = data(tmp_path / "c.jsonl", rows)
    proc = _limited(64 * 1024, "tokenize", src, "-o", tmp_path / "tok", "--model", tiny_models("llama"),
                    "--num-proc", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    one_error(proc.stderr, "file too large", "tok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


@pytest.mark.slow
def test_infer_writes_through_dev_null_without_a_partial_file(tmp_path, capsys, tiny_models):
    src = data(tmp_path / "x.jsonl")
    code, out, err = run_cli(capsys, "infer", "--data", src, "-o", "/dev/null", "--model", tiny_models("llama"),
                             "--max-new-tokens", "2")
    assert code == 0, err
    assert "wrote 3 predictions to /dev/null" in out
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and not os.path.exists("/dev/null.partial")
