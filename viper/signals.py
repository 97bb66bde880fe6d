"""Stop requests: SIGINT / SIGTERM turned into "finish this step, save a checkpoint, then stop"."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """Context manager: SIGINT and SIGTERM set ``signum`` instead of stopping the process, so a training loop can
    finish its step, save a checkpoint and stop (``viper.errors.Stopped``). A second signal of the same kind acts
    as it normally would (Ctrl-C twice interrupts at once). Outside the main thread (where Python cannot install
    handlers, e.g. a flow's worker thread) it does nothing and ``signum`` stays None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
