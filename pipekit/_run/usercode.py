"""The boundary around user code: what a stage's exception becomes in its result."""

from __future__ import annotations

import os
import traceback

from pipekit.exceptions import PipekitError, StageCodeError

__all__ = ["error_text", "user_traceback"]

_PIPEKIT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_traceback(exc: BaseException) -> str:
    """The exception's traceback with pipekit's own frames left out."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(f.filename).startswith(_PIPEKIT_DIR + os.sep)
    ]
    text = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    text.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(text)


def error_text(stage: str, e: BaseException) -> str:
    """A pipekit error's own message; for anything else, the user's traceback."""
    if isinstance(e, PipekitError):
        return e.message
    if isinstance(e, SystemExit):
        return (
            f"Stage '{stage}' called sys.exit({e.code!r}). A stage ends by returning (success) or"
            f" raising (failure); sys.exit does not end the run\n{user_traceback(e)}"
        )
    try:
        return StageCodeError(stage=stage, error=e, traceback=user_traceback(e)).message
    except Exception as inner:  # the exception's own __str__ raised
        name = type(e).__name__
        return f"Stage '{stage}' raised {name} (its message could not be shown: {type(inner).__name__})"
