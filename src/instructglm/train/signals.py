"""Stopping training early on SIGTERM/SIGINT: finish the step, save a checkpoint, stop."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path


class StopRequest:
    """SIGTERM/SIGINT handlers for the training loop: the first signal sets a flag, the loop finishes
    its step, saves a checkpoint and stops; a second signal stops at once (``KeyboardInterrupt``).

    After the save, SIGTERM returns normally (exit status 0: what SLURM and other schedulers expect
    after a graceful pre-emption) and SIGINT raises ``KeyboardInterrupt`` (the CLI exits with 130).
    Handlers are only installed from the main thread, and :meth:`restore` puts the previous ones back.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # only sets the flag: printing here could re-enter stderr
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal on another process"

    def requested(self, global_sum=None) -> bool:
        """True when a signal arrived here, or (``global_sum`` over the processes) on any process."""
        local = 1.0 if self.signum is not None else 0.0
        if (global_sum(local) if global_sum is not None else local) <= 0:
            return False
        print(f"\n{self.name} received: saving a checkpoint after this step, then stopping "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)
        return True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def finish(self, checkpoint: Path, step: int, total_steps: int, main: bool, result: dict) -> dict:
        """Say how to resume; SIGINT then goes on as ``KeyboardInterrupt``, otherwise the result says
        which signal stopped the run and where its checkpoint is."""
        if main:
            print(f"stopped by {self.name} after step {step} of {total_steps}; checkpoint saved in "
                  f"{checkpoint}. Resume with the same command plus --resume latest",
                  file=sys.stderr, flush=True)
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        return {**result, "interrupted": self.name, "checkpoint": str(checkpoint)}
