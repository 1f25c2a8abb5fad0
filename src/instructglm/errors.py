"""The one exception type for mistakes a user can make (bad file, bad field, bad flag).

The CLI prints a ``UserError`` as a single line and exits with status 2, without a traceback.
Everything else is a bug in InstructGLM and keeps its traceback.
"""


class UserError(Exception):
    """An error caused by the user's input; the message names the file, line or field."""


def where(path, line=None) -> str:
    """``FILE`` or ``FILE:LINE`` for messages."""
    return f"{path}:{line}" if line is not None else str(path)
