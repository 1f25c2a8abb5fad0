"""Writing results so that a name holds either nothing or a complete result; JSON lines; checksums.

Every output InstructGLM writes (canonical JSONL, rejects, tokenized datasets, checkpoints, merged
models, GGUF files, prepared model caches) goes through :func:`atomic_file` or :func:`atomic_dir`:
the data is written under a hidden temporary sibling (``.NAME.tmp-*``) and renamed into place only
when complete. A failure removes the temporary; a ``kill -9`` leaves it under its hidden name.
Temporaries get the permissions the user's umask gives ordinary files and directories, because
``tempfile`` creates them private (0600/0700) and a rename would keep that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from instructglm.errors import UserError, where


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prepare_parent(path: Path) -> Path:
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name for the output")
    parent = path.parent
    if not parent.exists():  # (a parent that is a file fails below, with "cannot write output")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{path}: cannot create output directory: {e.strerror}") from None
    return parent


class atomic_file:
    """``with atomic_file(path) as f: f.write(...)``: written to a temporary sibling, renamed on success.

    An exception in the block (or a failing close) removes the temporary and leaves ``path`` as it was.
    """

    def __init__(self, path: str | Path, mode: str = "w"):
        self.path = Path(path)
        self.mode = mode

    def __enter__(self):
        parent = _prepare_parent(self.path)
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        except OSError as e:
            raise UserError(f"{self.path}: cannot write output: {e.strerror}") from None
        os.fchmod(fd, 0o666 & ~_umask())
        self.file = os.fdopen(fd, self.mode, encoding=None if "b" in self.mode else "utf-8")
        return self.file

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())  # the data is on disk before the name points at it
            self.file.close()
        except BaseException:
            os.unlink(self.tmp)
            raise
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False


@contextmanager
def atomic_dir(target: str | Path, marker: str | None = None, marker_text: str = "") -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` fill ``tmp``; on success it replaces ``out`` whole.

    ``marker`` (e.g. ``.complete``) is written last, so a reader that checks for it never takes a
    directory whose files are still being written.
    """
    target = Path(target)
    parent = _prepare_parent(target) if not target.is_dir() else target.parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as e:
        raise UserError(f"{target}: cannot create output directory: {e.strerror}") from None
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if marker:
            (tmp / marker).write_text(marker_text)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def dumps(record: Any) -> str:
    """One JSON line; Chinese stays readable."""
    return json.dumps(record, ensure_ascii=False)


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Write records as UTF-8 JSON lines, atomically; return how many."""
    n = 0
    with atomic_file(path) as f:
        for rec in records:
            f.write(dumps(rec) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    """An indented UTF-8 JSON file, atomically."""
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` for each non-blank line of a JSON-lines file we (or a user) wrote.

    A line that is not JSON is a :class:`UserError` naming ``FILE:LINE``. (Input data files of any
    layout are read by :mod:`instructglm.convert.sources`, which also survives bad bytes.)
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where(path, lineno)}: invalid JSON: {e.msg} (column {e.colno})") from None


def read_jsonl(path: str | Path) -> list[Any]:
    """Every value of a JSON-lines file (see :func:`iter_jsonl`)."""
    return [value for _, value in iter_jsonl(path)]


def read_json(path: str | Path) -> Any:
    """A JSON file, or a :class:`UserError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
