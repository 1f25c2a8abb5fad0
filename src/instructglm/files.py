"""Writing results so that a name holds either nothing or a complete result; JSON lines; checksums.

Every output InstructGLM writes (canonical JSONL, rejects, tokenized datasets, checkpoints, merged
models, GGUF files, prepared model caches) goes through :func:`atomic_file` or :func:`atomic_dir`:
the data is written under a hidden temporary sibling (``.NAME.tmp-*``) and renamed into place only
when complete. A failure removes the temporary; a ``kill -9`` leaves it under its hidden name.
Temporaries get the permissions the user's umask gives ordinary files and directories (a file
being replaced keeps its own), because ``tempfile`` creates them private (0600/0700) and a rename
would keep that. Data and the rename are synced (fsync) so a power cut cannot leave an empty
"complete" file. Where the bytes land is :mod:`instructglm.paths`'s: a symlink's target, or a
character device or FIFO written through; a full disk (ENOSPC, EDQUOT, EFBIG) is one line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterable, Iterator

from instructglm.errors import UserError, where
from instructglm.paths import destination


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Errors of a full or limited disk: the user can fix them, so they are one line, not a traceback.
_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for the file system or the file size limit",
                errno.EROFS: "read-only file system",
                errno.EPIPE: "broken pipe (the reader stopped reading)"}  # not the disk, but as clear


def write_error(path: str | Path, error: OSError) -> UserError | None:
    """The one-line UserError for a disk that is full (or limited) while writing ``path``, else None."""
    text = _DISK_ERRORS.get(error.errno)
    if text is None:  # pyarrow's errors carry no errno, only the system's message
        text = next((t for code, t in _DISK_ERRORS.items() if os.strerror(code) in str(error)), None)
    return UserError(f"{text} writing {path}") if text else None


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse to sync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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

    An exception in the block (or a failing write, flush, fsync or close) removes the temporary and
    leaves ``path`` as it was; a full disk or a file size limit is a one-line :class:`UserError`.
    Where the bytes land is :func:`instructglm.paths.destination`: a symlink's target gets the
    atomic write (the link stays), a character device or FIFO (``/dev/null``) is written through.
    """

    def __init__(self, path: str | Path, mode: str = "w"):
        self.path = Path(path)
        self.mode = mode

    def __enter__(self):
        dest = destination(self.path)
        self.stream, self.target = dest.stream, dest.path
        encoding = None if "b" in self.mode else "utf-8"
        if self.stream:
            try:
                self.file = open(self.target, self.mode, encoding=encoding)
            except OSError as e:
                raise UserError(f"{self.path}: cannot write output: {e.strerror}") from None
            return self.file
        parent = _prepare_parent(self.target)
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=parent)
        except OSError as e:
            raise UserError(f"{self.path}: cannot write output: {e.strerror}") from None
        try:  # a file being replaced keeps its mode, as with the shell's '>'; a new one gets the umask's
            mode = stat.S_IMODE(os.stat(self.target).st_mode)
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
        self.file = os.fdopen(fd, self.mode, encoding=encoding)
        return self.file

    def _failed(self, error: BaseException | None) -> None:
        """Close quietly, remove the temporary; a disk error becomes its UserError."""
        try:
            self.file.close()
        except OSError:
            pass
        if not self.stream:
            with suppress(FileNotFoundError):
                os.unlink(self.tmp)
        if isinstance(error, OSError):
            user_error = write_error(self.path, error)
            if user_error is None and error is not None and self._closing:
                user_error = UserError(f"{self.path}: cannot write output: {error.strerror or error}")
            if user_error is not None:
                raise user_error from None

    def __exit__(self, exc_type, exc, tb):
        self._closing = False
        if exc_type is not None:
            self._failed(exc)
            return False
        self._closing = True
        try:
            self.file.flush()
            if not self.stream:
                os.fsync(self.file.fileno())  # the data is on disk before the name points at it
            self.file.close()
        except BaseException as e:
            self._failed(e)
            raise
        if not self.stream:
            os.replace(self.tmp, self.target)
            _fsync_dir(self.target.parent)  # ... and so is the new name
        return False


def _fsync_tree(folder: Path) -> None:
    """fsync every file and directory under ``folder`` (what other libraries wrote there too)."""
    for root, _, names in os.walk(folder):
        for name in names:
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(root))


@contextmanager
def atomic_dir(target: str | Path, marker: str | None = None, marker_text: str = "") -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` fill ``tmp``; on success it replaces ``out`` whole.

    ``marker`` (e.g. ``.complete``) is written last, so a reader that checks for it never takes a
    directory whose files are still being written. A symlink is followed (its target is replaced,
    the link stays); an existing file is refused, never replaced by the directory. The files are
    synced before the rename; the old directory is renamed aside first and deleted after, so the
    name never holds a half-deleted one. A full disk is a one-line :class:`UserError`.
    """
    given = Path(target)
    target = Path(os.path.realpath(given))
    if target.exists() and not target.is_dir():
        raise UserError(f"{given}: exists and is not a directory; give a directory for the output")
    parent = _prepare_parent(target) if not target.is_dir() else target.parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as e:
        raise UserError(f"{given}: cannot create output directory: {e.strerror}") from None
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if marker:
            (tmp / marker).write_text(marker_text)
        _fsync_tree(tmp)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / "d")
        os.replace(tmp, target)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        user_error = write_error(given, e)
        if user_error is None:
            raise
        raise user_error from None
    except UserError as e:  # e.g. a full disk met by atomic_file inside: name the result, not the temporary
        if str(tmp) not in str(e):
            raise
        raise UserError(str(e).replace(str(tmp), str(given))) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None``.

    JSON has no NaN or Infinity; Python's ``json`` writes them anyway, as tokens other readers
    (JavaScript, ``jq``, orjson) reject. InstructGLM writes ``null`` instead, as JavaScript does.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(record: Any, indent: int | None = None) -> str:
    """One JSON line (or, with ``indent``, an indented document); Chinese stays readable, and a
    NaN or infinite number is ``null`` (see :func:`finite`)."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False, indent=indent)
    except ValueError:  # a NaN or infinity somewhere: the slow path, only then
        return json.dumps(finite(record), ensure_ascii=False, allow_nan=False, indent=indent)


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
        f.write(dumps(obj, indent=2) + "\n")


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
            except ValueError as e:  # an integer longer than Python's limit on digits
                raise UserError(f"{where(path, lineno)}: invalid JSON: {e}".split(";")[0]) from None


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
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise UserError(f"{path}: not valid JSON ({str(e).split(';')[0]})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSON file") from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
