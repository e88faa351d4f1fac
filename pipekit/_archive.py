"""Tar archives of files travelling between this machine and a stage's place.

Everything that comes out of a stage is untrusted: members that would leave the destination
(absolute names, ``..``, links pointing out) are refused, never followed.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

__all__ = ["Member", "members", "pack", "pack_tree", "regular_files", "unpack"]

#: never shipped into a stage, never written back from one: pipekit's own state
PRIVATE_DIRS = frozenset({".pipekit"})


@attrs.frozen
class Member:
    """One entry of an archive, named relative to the archived folder (``""`` for the folder itself)."""

    name: str
    kind: str  # "file", "dir", "link"
    mode: int = 0o644
    data: bytes = attrs.field(default=b"", repr=False)
    target: str = ""  # a link's target

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def pack(path: Path) -> bytes:
    """``path`` (a file or a folder) as a tar archive whose members are named from its base name."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname=path.name)
    return buf.getvalue()


def pack_tree(root: Path, exclude: Iterable[str] = PRIVATE_DIRS) -> tuple[bytes, dict[str, str]]:
    """The contents of ``root`` as a tar archive (members relative to it), and the sha256 of each
    regular file by relative name."""
    skip = set(exclude)
    manifest: dict[str, str] = {}
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder, dirs, files in os.walk(root):
            rel_dir = os.path.relpath(folder, root)
            dirs[:] = sorted(d for d in dirs if not (rel_dir == "." and d in skip))
            for name in [*dirs, *sorted(files)]:
                full = os.path.join(folder, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                info = tar.gettarinfo(full, arcname=rel)
                if info.isreg():
                    with open(full, "rb") as f:
                        data = f.read()
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    manifest[rel] = hashlib.sha256(data).hexdigest()
                elif info.isdir() or info.issym():
                    tar.addfile(info)
    return buf.getvalue(), manifest


def members(archive: bytes, *, strip: int = 1) -> Iterator[Member]:
    """The archive's files, folders and links, their names without the first ``strip`` parts.

    Members whose names would leave the folder (absolute, ``..``) and other kinds (devices,
    fifos, hard links) are left out.
    """
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for info in tar:
            parts = [p for p in info.name.split("/") if p not in ("", ".")]
            if info.name.startswith("/") or ".." in parts:
                continue
            name = "/".join(parts[strip:])
            if info.isreg():
                f = tar.extractfile(info)
                yield Member(name, "file", info.mode & 0o777, f.read() if f is not None else b"")
            elif info.isdir():
                yield Member(name, "dir", info.mode & 0o777)
            elif info.issym():
                yield Member(name, "link", 0o777, target=info.linkname)


def regular_files(archive: bytes | None) -> list[tuple[str, bytes]]:
    """(name relative to the archived path, content) of each regular file; ``""`` for a lone file."""
    if archive is None:
        return []
    return [(m.name, m.data) for m in members(archive) if m.kind == "file"]


def link_stays_inside(name: str, target: str) -> bool:
    """Whether a link at ``name`` (relative) pointing at ``target`` resolves inside the folder."""
    if target.startswith("/"):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    return resolved != ".." and not resolved.startswith("../")


def safe_target(root: Path, name: str) -> Path | None:
    """Where ``name`` goes under ``root``, or None when a folder on the way is a link (or missing
    under a link) that would lead out of ``root``."""
    target = root / name
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(target.parent)
    if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
        return None
    return target


def unpack(archive: bytes, dest: Path) -> None:
    """Unpack ``archive`` (members relative to ``dest``) into ``dest``, refusing anything that
    would leave it."""
    for m in members(archive, strip=0):
        if not m.name:
            continue
        target = safe_target(dest, m.name)
        if target is None:
            continue
        write_member(target, m)


def write_member(target: Path, m: Member) -> None:
    """Write one member at ``target``, replacing what is there (never writing through a link)."""
    if m.kind == "dir":
        if target.is_symlink():
            target.unlink()
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        return  # a folder stays a folder
    tmp = target.with_name(f".{target.name}.pipekit-tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if m.kind == "link":
        os.symlink(m.target, tmp)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, m.mode or 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(m.data)
    os.replace(tmp, target)
