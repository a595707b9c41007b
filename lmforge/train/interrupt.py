"""SIGINT / SIGTERM during training: the first one asks for a stop at the next step
boundary (the loop then saves a checkpoint and says how to resume); a second one exits at
once.

    with StopSignals() as signals:
        while ...:
            train_step()
            if signals.received:      # "SIGINT" / "SIGTERM"
                save(); raise TrainingInterrupted(...)

Handlers are installed only in the main thread (Python delivers signals there; elsewhere the
context manager does nothing) and the previous handlers are restored on exit. The second
signal restores them too and then acts as it would have without us: SIGINT raises
`KeyboardInterrupt` where the program is, SIGTERM (default action) ends the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving ``checkpoint`` (None if nothing to save)."""

    def __init__(self, message: str, checkpoint: Any = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class StopSignals:
    """Context manager turning the first SIGINT/SIGTERM into a flag (``received``)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) != signal.SIG_IGN:  # (ignored stays ignored)
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            note = (f"\n{self.received}: stopping after this step and saving a checkpoint "
                    "(send it again to exit at once)\n")  # fmt: skip
            with contextlib.suppress(OSError):
                os.write(2, note.encode())
            return
        previous = self._previous.get(signum)
        self._restore()
        if callable(previous):  # e.g. Python's default SIGINT handler: KeyboardInterrupt
            previous(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # the default action: end the process now


__all__ = ["SIGNALS", "StopSignals", "TrainingInterrupted"]
