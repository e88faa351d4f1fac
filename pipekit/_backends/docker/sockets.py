"""The engine's attached sockets: closed completely, not left to the garbage collector."""

from __future__ import annotations

from typing import Any

__all__ = ["close_stream"]


def close_stream(sock: Any) -> None:
    """Close an exec stream's socket completely (docker-py leaves it to the garbage collector)."""
    response = getattr(sock, "_response", None)
    raw = getattr(sock, "_sock", None)
    try:
        if response is not None:
            response.close()
    except (OSError, ValueError):
        pass
    sock.close()
    if raw is not None:
        raw.close()
