"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class ViperError(Exception):
    """An input, file or state the user can fix; the message names the file/key and what was expected."""
