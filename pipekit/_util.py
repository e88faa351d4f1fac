"""Small helpers shared by several modules (no pipekit imports)."""

from __future__ import annotations

import re
import uuid

__all__ = ["new_run_id", "slug"]


def slug(text: str, *, lower: bool = False, keep: str = "_.-") -> str:
    """``text`` made safe for a container, network, volume or file name.

    Runs of characters other than letters, digits and those in ``keep`` become ``-``; leading and
    trailing ``-`` and ``.`` go. Never empty.
    """
    if lower:
        text = text.lower()
    allowed = "".join("\\" + c for c in keep)
    cleaned = re.sub(f"[^A-Za-z0-9{allowed}]+", "-", text).strip("-.")
    return cleaned or "x"


def new_run_id() -> str:
    """A fresh run id: 12 hex digits."""
    return uuid.uuid4().hex[:12]
