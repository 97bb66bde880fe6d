"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2 (``Stopped``: 128 + the
signal's number, as a shell reports a process stopped by it)."""


class ViperError(Exception):
    """An input, file or state the user can fix; the message names the file/key and what was expected."""


class Stopped(Exception):
    """A run stopped on request (SIGINT / SIGTERM) after saving its state; the same command resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
