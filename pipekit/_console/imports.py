"""Imports that cost less than they would by default.

structlog imports rich (and with it pygments and asyncio: about 100 ms and 14 MiB here) whenever
rich is installed, for its development console renderer and its rich tracebacks, and colorama
(with ctypes: about 5 ms) for colours on Windows consoles, none of which pipekit uses: pipekit
renders its own console lines. structlog makes rich optional (``rich = None``
when the import fails), so pipekit imports structlog with rich hidden, and puts rich back at once:
rich stays importable for pipekit's own live view and for anyone else in the process.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["import_structlog"]

#: what structlog imports only for features pipekit does not use
_OPTIONAL = ("rich", "better_exceptions", "colorama")


def import_structlog() -> Any:
    if "structlog" in sys.modules:
        return sys.modules["structlog"]
    hidden = [name for name in _OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        import structlog
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
    return structlog
