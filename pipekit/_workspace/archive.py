"""Tar archives of files travelling between this machine and a stage's place.

Everything that comes out of a stage is untrusted: members that would leave the destination
(absolute names, ``..``, links pointing out) are refused, never followed.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from pipekit._workspace.delta import StatKey, stat_key
from pipekit._workspace.hosttree import CHUNK

__all__ = ["ChunkReader", "Member", "TreeStream", "members", "pack", "regular_files", "unpack"]

#: never shipped into a stage: pipekit's own state (nothing private is brought back: see _hosttree)
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
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname=path.name)
    return buf.getvalue()


class TreeStream:
    """The contents of ``root`` as a tar stream, in pieces (members relative to it): iterate it
    once. Files are read a piece at a time, so memory stays flat whatever their size; a file
    hard-linked to one already sent travels as a hard link. ``manifest`` is filled on the way:
    relative name -> the sha256 of a regular file, ``/`` for a folder, ``->TARGET`` for a link.
    ``exclude``: relative names left out with everything under them. ``names``: only these
    (relative, parents before what is in them) instead of the whole tree; ``stats`` is filled
    too: relative name -> its stat key (:func:`pipekit._workspace.delta.stat_key`), taken before
    the file is read."""

    def __init__(
        self,
        root: Path,
        exclude: Collection[str] = PRIVATE_DIRS,
        hidden: Collection[str] = (),
        names: Iterable[str] | None = None,
    ) -> None:
        self.root = root
        self.names = names
        self.stats: dict[str, StatKey] = {}
        self.exclude = frozenset(exclude)
        #: files left out wherever they are, also under another name (a hard link): the secrets file
        self.hidden = {(st.st_dev, st.st_ino) for st in map(_stat, hidden) if st is not None}
        self.manifest: dict[str, str] = {}
        self.size = 0
        self._inodes: dict[tuple[int, int], str] = {}

    def __iter__(self) -> Iterator[bytes]:
        entries = self._walk() if self.names is None else ((str(self.root / n), n) for n in self.names)
        for full, rel in entries:
            for piece in self._member(full, rel):
                self.size += len(piece)
                yield piece
        yield bytes(2 * tarfile.BLOCKSIZE)

    def _walk(self) -> Iterator[tuple[str, str]]:
        for folder, dirs, files in os.walk(self.root):
            rel_dir = os.path.relpath(folder, self.root)
            names = [os.path.normpath(os.path.join(rel_dir, d)) for d in dirs]
            dirs[:] = sorted(d for d, rel in zip(dirs, names, strict=True) if rel not in self.exclude)
            for name in [*dirs, *sorted(files)]:
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if rel not in self.exclude:
                    yield os.path.join(folder, name), rel

    def _member(self, full: str, rel: str) -> Iterator[bytes]:
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return  # gone since it was listed
        info = tarfile.TarInfo(rel)
        info.mode, info.mtime, info.uid, info.gid = st.st_mode & 0o7777, int(st.st_mtime), st.st_uid, st.st_gid
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            self.manifest[rel] = "/"
            self.stats[rel] = ("d", stat.S_IMODE(st.st_mode), 0, 0, 0, 0, "")  # (stat_key of a folder)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
            self.manifest[rel] = "->" + info.linkname
            self.stats[rel] = ("l", 0, 0, 0, 0, 0, info.linkname)  # (stat_key of a link)
        elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in self.hidden:
            return
        elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in self._inodes:
            first = self._inodes[(st.st_dev, st.st_ino)]
            info.type, info.linkname = tarfile.LNKTYPE, first
            self.manifest[rel] = self.manifest[first]
            self.stats[rel] = self.stats[first]
        elif stat.S_ISREG(st.st_mode):
            self.stats[rel] = stat_key(st)  # type: ignore[assignment]  # (a regular file has one)
            yield from self._file(full, rel, info)
            if st.st_nlink > 1:
                self._inodes[(st.st_dev, st.st_ino)] = rel
            return
        else:
            return  # devices, sockets, fifos stay here
        yield info.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape")

    def _file(self, full: str, rel: str, info: tarfile.TarInfo) -> Iterator[bytes]:
        try:
            f = open(os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
        except OSError:
            return  # replaced by a link or gone since it was listed
        with f:
            info.size = left = os.fstat(f.fileno()).st_size
            yield info.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape")
            digest = hashlib.sha256()
            while left > 0:
                chunk = f.read(min(CHUNK, left)) or bytes(min(CHUNK, left))  # a file that shrank: zeros
                digest.update(chunk)
                left -= len(chunk)
                yield chunk
        self.manifest[rel] = digest.hexdigest()
        if info.size % tarfile.BLOCKSIZE:
            yield bytes(tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte strings (an HTTP response's pieces)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def members(archive: bytes, *, strip: int = 1) -> Iterator[Member]:
    """The archive's files, folders and links, their names without the first ``strip`` parts.

    Members whose names would leave the folder (absolute, ``..``) and other kinds (devices,
    fifos, hard links) are left out.
    """
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
