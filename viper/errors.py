"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2 (``Stopped``: 128 + the
signal's number, as a shell reports a process stopped by it)."""

import signal
from pathlib import Path


class ViperError(Exception):
    """An input, file or state the user can fix; the message names the file/key and what was expected."""


class Stopped(Exception):
    """A run stopped on request (SIGINT / SIGTERM) after saving its state; the same command resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @classmethod
    def saved(cls, signum: int, at: str, directory: str | Path) -> "Stopped":
        """The stop of a loop that saved its checkpoint in ``directory`` at ``at`` (e.g. "env step 40 of 100")."""
        return cls(
            f"stopped by {signal.Signals(signum).name} at {at}; checkpoint saved in {directory}; run the same command "
            "to resume",
            signum,
        )
