"""Copy mode by difference: the workspace travels once per run to a stage's machine, then only what changed.

A backend that can (``capabilities.layered_workspace``) keeps a *base* copy of the pipeline's
folder on the stage's machine, made once per run (:class:`WorkspaceBase`), and gives each stage a
view of it with a layer of its own on top (an overlay: what the stage creates, changes or deletes
lands in that layer only, so parallel stages never see each other's writes and the base never
changes). Shipping a stage's workspace is then: what this machine's folder has that differs from
the base, by a stat manifest (:func:`stat_tree`: no file is read to know it changed); bringing it
back is: what the stage's layer holds (:class:`ChangesApplier`), deletions included (overlay
whiteouts, opaque folders, files made and removed again).

Everything in the stage's layer is untrusted, as in :mod:`pipekit._workspace.sync`: a whiteout (or
a device a stage made that looks like one) deletes only a name pipekit shipped, never one in a
private place, never through a link.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Collection, Iterable
from pathlib import Path

import attrs

__all__ = [
    "StatKey",
    "WorkspaceBase",
    "changed_since",
    "hidden_names",
    "key_kind",
    "key_size",
    "shipped",
    "stat_key",
    "stat_tree",
    "topmost",
]

#: what says a name is unchanged since it was shipped: kind, mode, and for a file its inode, size,
#: mtime and ctime in nanoseconds (a write always moves ctime, which nobody can set back), for a
#: link its target; a folder is the same folder whatever was added to or removed from it. A
#: file's key is those five numbers packed in 34 bytes (:data:`_FILE_KEY`: a manifest of 20,000
#: files holds a few MiB less than as tuples); a folder's and a link's are tuples
#: ``(kind, mode, 0, 0, 0, 0, target)``.
StatKey = tuple[str, int, int, int, int, int, str] | bytes
_FILE_KEY = struct.Struct("<HQqqq")  # mode, inode, size, mtime_ns, ctime_ns


def key_kind(key: StatKey) -> str:
    """``f``, ``d`` or ``l``."""
    return "f" if isinstance(key, bytes) else key[0]


def key_size(key: StatKey) -> int:
    """A file's size (0 for a folder or a link)."""
    return int(_FILE_KEY.unpack(key)[2]) if isinstance(key, bytes) else 0


def hidden_names(root: Path, files: Collection[str]) -> tuple[str, ...]:
    """The names, relative to ``root``, of those ``files`` (absolute paths) that lie under it."""
    real_root = os.path.realpath(root)
    names = []
    for f in files:
        real = os.path.realpath(f)
        if real.startswith(real_root + os.sep):
            names.append(Path(os.path.relpath(real, real_root)).as_posix())
    return tuple(names)


def shipped(root: Path, hidden: Collection[str]) -> dict[str, StatKey]:
    """The stat manifest of what travels of ``root`` (as ``WorkspaceSync`` ships it): not
    ``.pipekit/``, not the ``hidden`` files (absolute paths: the secrets file) under any name."""
    inodes = set()
    for path in hidden:
        try:
            st = os.stat(path)
        except OSError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    return stat_tree(root, {".pipekit", *hidden_names(root, hidden)}, inodes)


def stat_key(st: os.stat_result, target: str = "") -> StatKey | None:
    """The key of an entry (None for kinds that never travel: devices, sockets, fifos)."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return ("d", mode, 0, 0, 0, 0, "")
    if stat.S_ISLNK(st.st_mode):
        return ("l", 0, 0, 0, 0, 0, target)
    if stat.S_ISREG(st.st_mode):
        return _FILE_KEY.pack(mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return None


def stat_tree(root: Path, exclude: Collection[str], hidden: Collection[tuple[int, int]]) -> dict[str, StatKey]:
    """Every file, folder and link under ``root`` (relative name -> :data:`StatKey`), as
    :class:`~pipekit._workspace.archive.TreeStream` would pack them: ``exclude`` (relative names)
    left out with what is under them, files whose (device, inode) is in ``hidden`` left out."""
    found: dict[str, StatKey] = {}
    excluded = frozenset(exclude)
    todo = [("", str(root))]
    while todo:
        prefix, folder = todo.pop()
        try:
            listing = list(os.scandir(folder))
        except OSError:
            continue  # gone since it was listed, or unreadable: it does not travel
        for entry in listing:
            rel = prefix + entry.name
            if rel in excluded:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                target = os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else ""
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in hidden:
                continue
            key = stat_key(st, target)
            if key is None:
                continue
            found[rel] = key
            if key_kind(key) == "d":
                todo.append((rel + "/", entry.path))
    return found


def changed_since(before: dict[str, StatKey], now: dict[str, StatKey]) -> tuple[list[str], list[str]]:
    """What differs between two manifests: the names to send (parents before what is in them) and
    the names gone (only the topmost of a gone folder)."""
    changed = sorted(n for n, key in now.items() if before.get(n) != key)
    gone = [n for n in before if n not in now or (key_kind(before[n]) == "d" and key_kind(now[n]) != "d")]
    return changed, topmost(gone)


def topmost(names: Iterable[str]) -> list[str]:
    """``names`` without those inside another one of them."""
    result: list[str] = []
    for name in sorted(names):
        if result and name.startswith(result[-1] + "/"):
            continue
        result.append(name)
    return result


@attrs.define
class WorkspaceBase:
    """One base copy of the workspace on a stage's machine, never changed once made: what the
    backend calls it (``name``, a volume), and what it holds: a stat key and a digest (as
    ``TreeStream.manifest``) for each name."""

    name: str
    stats: dict[str, StatKey]
    digests: dict[str, str]
    size: int = 0  # bytes sent to make it
    seconds: float = 0.0  # how long that took
    #: how far this machine's folder had moved from it at the last stage's start: (names, bytes)
    behind: tuple[int, int] = (0, 0)
    #: made by an earlier run (kept in the engine across runs), not by this one
    kept: bool = False
