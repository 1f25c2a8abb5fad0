"""The one check of output paths, made before any work starts, and where a write really lands.

Every writer asks here what its output path is before it reads or computes anything:

* :func:`output_file` for a file (``convert -o``, its rejects file, ``infer -o``) and
  :func:`output_dir` for a directory (``tokenize -o``, ``merge -o``, ``train`` ``output_dir``).
  A path that cannot take the output is a :class:`UserError` naming the flag and the path: a
  directory where a file belongs, an existing file (or device) where a directory belongs, a path
  under ``/proc`` or ``/sys``, a parent that is a file or cannot be created.
* :func:`refuse_inputs` refuses an output that is one of the inputs (the same file through
  ``samefile``, through symlinks, or matched by a glob) or, for a directory, holds one: writing it
  would destroy the data being read.

Where the bytes go (:func:`destination`), used by :mod:`instructglm.files` for every write:
a character device or FIFO (``/dev/null``, ``/dev/stdout`` on a pipe, ``mkfifo``) is written
*through*, opened and written like a shell's ``>``, never replaced; a symlink is followed, so the
file it points at gets the atomic write and the link stays a link (a dangling link's target is
created). Everything else is a regular file written atomically under its own name.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from instructglm.errors import UserError

_KERNEL_TREES = ("/proc", "/sys")


@dataclass(frozen=True)
class Destination:
    """Where a write to a path lands: ``path`` with symlinks followed, and whether it is a stream
    (character device or FIFO: written through, no temporary, no rename, no fsync)."""

    path: Path
    stream: bool


def _label(path: str | Path, flag: str | None) -> str:
    return f"{flag} {path}" if flag else str(path)


def _under_kernel_tree(real: str) -> bool:
    return any(real == top or real.startswith(top + "/") for top in _KERNEL_TREES)


def _is_stream(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)


def destination(path: str | Path, flag: str | None = None) -> Destination:
    """Where writing the file ``path`` lands (see the module docstring), or a UserError.

    The checks that need no knowledge of the caller's inputs: a directory, a block device or
    socket, a path under ``/proc`` or ``/sys``.
    """
    label = _label(path, flag)
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        st = None
    except OSError as e:  # a parent that is a file (ENOTDIR), a symlink loop, no permission
        raise UserError(f"{label}: cannot write output: {e.strerror}") from None
    if st is not None and _is_stream(st):
        return Destination(Path(path), True)
    real = os.path.realpath(path)
    if _under_kernel_tree(real):
        raise UserError(f"{label}: cannot write output under /{real.split('/')[1]} "
                        f"(a kernel interface, not a place for files)")
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UserError(f"{label}: is a directory; give a file name for the output")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(f"{label}: is not a regular file (a block device or socket); give a file name for the output")
    return Destination(Path(real), False)


def _check_parent(label: str, real: Path, cannot: str = "cannot write output") -> None:
    """The nearest existing ancestor of ``real`` is a directory we may write in."""
    parent = real.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link as a parent: mkdir cannot make it
            raise UserError(f"{label}: {cannot}: {parent} is a dangling symlink")
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{label}: {cannot}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{label}: {cannot}: {parent} is not writable")


def output_file(path: str | Path, flag: str | None = "--output") -> Destination:
    """Check the output file ``path`` (given with ``flag``) before work starts; where it lands."""
    dest = destination(path, flag)
    if not dest.stream:
        _check_parent(_label(path, flag), dest.path)
    return dest


def output_dir(path: str | Path, flag: str | None = "--output") -> Path:
    """Check the output directory ``path`` before work starts; return it with symlinks followed.

    An existing non-directory (a file, a device, ``/dev/null``) is refused: the directory would
    replace it.
    """
    label = _label(path, flag)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UserError(f"{label}: cannot create output directory: {e.strerror}") from None
    real = os.path.realpath(path)
    if _under_kernel_tree(real):
        raise UserError(f"{label}: cannot create output directory under /{real.split('/')[1]} "
                        f"(a kernel interface, not a place for files)")
    if st is not None and not stat.S_ISDIR(st.st_mode):
        kind = "file" if stat.S_ISREG(st.st_mode) else "device or special file"
        raise UserError(f"{label}: exists and is a {kind}, not a directory; give a directory for the output")
    _check_parent(label, Path(real), "cannot create output directory")
    return Path(real)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same inode (hard links, symlinks) or the same real path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_inputs(outputs: Iterable[tuple[str, str | Path]], inputs: Iterable[str | Path],
                  origin: dict[str, str] | None = None, directory: bool = False) -> None:
    """UserError if an output is one of the inputs, before anything is written.

    ``outputs`` are ``(what, path)`` pairs (``what`` names it in the message, e.g. ``--output`` or
    ``rejects file``); ``origin`` maps an input path to the glob pattern that matched it, for the
    message; with ``directory`` the outputs are directories, and an input inside one is refused too
    (the new directory replaces the old one whole).
    """
    inputs = [Path(p) for p in inputs]
    for what, out in outputs:
        if _is_stream_path(out):  # /dev/null as input and output is harmless
            continue
        real_out = os.path.realpath(out)
        for src in inputs:
            hit = same_file(out, src)
            if directory and not hit:
                hit = os.path.realpath(src).startswith(real_out.rstrip("/") + "/")
            if hit:
                pattern = (origin or {}).get(str(src))
                via = f" (matched by '{pattern}')" if pattern else ""
                where = "inside" if directory and not same_file(out, src) else "the same file as"
                raise UserError(f"{what} {out}: {where} the input {src}{via}; writing it would destroy the "
                                f"input; choose another output")


def _is_stream_path(path: str | Path) -> bool:
    try:
        return _is_stream(os.stat(path))
    except OSError:
        return False
