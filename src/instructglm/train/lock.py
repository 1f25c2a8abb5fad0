"""One training per output directory: an exclusive ``flock`` on ``OUT/.instructglm.lock``.

The kernel releases the lock when the process ends however it ends (exit, crash, SIGKILL), so a
stale lock cannot block the next run; the file itself stays (removing it could let two runs lock
two different files of the same name). It holds the owner's pid, for the message.
"""

from __future__ import annotations

import os
from pathlib import Path

from instructglm.errors import UserError

LOCK = ".instructglm.lock"


class RunLock:
    """``acquire`` or a one-line UserError naming the run that holds ``output_dir``; ``release`` always."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.path = output_dir / LOCK
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock (nothing else here depends on it)
            return
        try:
            self.created_dir = not self.output_dir.exists()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"{self.output_dir}: cannot create the output directory's lock file: "
                            f"{e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {owner})" if owner.isdigit() else ""
            raise UserError(f"{self.output_dir}: another training{who} is writing to this directory; wait for it "
                            f"to finish, or give another --output-dir") from None
        except OSError:  # a file system without locks (some network mounts): run unlocked
            os.close(fd)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Unlock; a directory this run created and left holding only the lock is removed again."""
        if self.fd is None:
            return
        if self.created_dir and [p.name for p in self.output_dir.iterdir()] == [LOCK]:
            self.path.unlink(missing_ok=True)
            try:
                self.output_dir.rmdir()
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None
