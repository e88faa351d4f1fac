"""What this machine knows of the base copies of its workspace that an engine keeps across runs.

A base copy (:class:`~pipekit._workspace.delta.WorkspaceBase`) outlives the run that made it, so
that the next run of the same folder ships only what changed since. What the base holds is known
from a *record* written here, in ``.pipekit/bases/`` (one JSON file per base: the stat key and the
digest of each name, as they were on this machine when the base was made), never from the engine:
nothing an engine or a stage holds decides what this machine believes a base contains. The
record is written once the base is complete; a record whose name or creation time does not match
the engine's volume is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pipekit._workspace.delta import StatKey, WorkspaceBase, hidden_names

__all__ = ["base_key", "base_path_label", "drop_record", "load_record", "records_dir", "save_record"]

FORMAT = 3  # (2: a file's stat key packed in bytes; 3: bases that are images say so in a label)


def records_dir(workspace: Path) -> Path:
    return workspace / ".pipekit" / "bases"


def base_key(workspace: Path, hidden: Collection[str]) -> str:
    """Which bases a run of ``workspace`` may use: its real path and the names it never ships
    (the secrets file: a base made while a name was shipped is never used once it is hidden)."""
    what = "\0".join([os.path.realpath(workspace), *sorted(hidden_names(workspace, hidden))])
    return hashlib.sha256(what.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def base_path_label(workspace: Path) -> str:
    """Where the base's folder is (``HOST:PATH``): what ``pipekit cleanup`` and the tests look at."""
    return f"{socket.gethostname()}:{os.path.realpath(workspace)}"


def save_record(workspace: Path, base: WorkspaceBase, created: str) -> None:
    """Write the record of ``base`` (its volume made at ``created``, as the engine says)."""
    folder = records_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{base.name}.json"
    tmp = folder / f".{base.name}.{os.getpid()}.tmp"
    data = {"format": FORMAT, "name": base.name, "created": created, "stats": base.stats, "digests": base.digests}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, separators=(",", ":"), default=_hex)  # (a file's stat key: its bytes in hex)
    os.replace(tmp, target)


def load_record(workspace: Path, name: str, created: str) -> WorkspaceBase | None:
    """The base ``name`` as its record says (None: no record, or one that is not of that volume)."""
    try:
        fd = os.open(records_dir(workspace) / f"{name}.json", os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            data: Any = json.load(f)
        if data.get("format") != FORMAT or data.get("name") != name or data.get("created") != created:
            return None
        stats: dict[str, StatKey] = data.pop("stats")  # (made tuples in place: one copy in memory at a time)
        for n, k in stats.items():
            stats[n] = bytes.fromhex(k) if isinstance(k, str) else tuple(k)  # type: ignore[assignment]
        digests: dict[str, str] = data.pop("digests")
        if not all(isinstance(d, str) for d in digests.values()):
            return None
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None
    return WorkspaceBase(name, stats, digests)


def drop_record(workspace: Path, name: str) -> None:
    try:
        os.unlink(records_dir(workspace) / f"{name}.json")
    except OSError:
        pass


def _hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not in a base's record: {type(value).__name__}")
