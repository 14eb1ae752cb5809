"""Stopping at a step boundary: SIGTERM (a cluster's time limit) and SIGINT (Ctrl-C) during training ask the
loop to checkpoint and exit, so neither loses the steps since the last checkpoint."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

CAUGHT = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint; `exit_code` is the shell's 128 + signal."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        saved = f"checkpoint saved: {checkpoint}; continue with --resume" if checkpoint else "no run folder to save to"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {saved}")


class StopRequests:
    """While entered (in the main thread), the first SIGTERM or SIGINT is recorded in `signum` instead of
    ending the process; a second one ends it at once, as the default handlers would."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in CAUGHT}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
