"""Tar archives of files travelling between this machine and a stage's place.

Everything that comes out of a stage is untrusted: members that would leave the destination
(absolute names, ``..``, links pointing out) are refused, never followed.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import queue
import stat
import struct
import tarfile
import threading
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from pipekit._workspace.delta import StatKey, stat_key
from pipekit._workspace.hosttree import CHUNK

__all__ = ["ChunkReader", "Member", "TreeStream", "feed", "header", "members", "pack", "regular_files", "unpack"]

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
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self.manifest[rel] = "/"
            self.stats[rel] = ("d", stat.S_IMODE(mode), 0, 0, 0, 0, "")  # (stat_key of a folder)
            yield header(rel, st, tarfile.DIRTYPE)
        elif stat.S_ISLNK(mode):
            target = os.readlink(full)
            self.manifest[rel] = "->" + target
            self.stats[rel] = ("l", 0, 0, 0, 0, 0, target)  # (stat_key of a link)
            yield header(rel, st, tarfile.SYMTYPE, link=target)
        elif not stat.S_ISREG(mode) or (st.st_dev, st.st_ino) in self.hidden:
            return  # devices, sockets, fifos stay here; so does the secrets file
        elif (st.st_dev, st.st_ino) in self._inodes:
            first = self._inodes[(st.st_dev, st.st_ino)]
            self.manifest[rel] = self.manifest[first]
            self.stats[rel] = self.stats[first]
            yield header(rel, st, tarfile.LNKTYPE, link=first)
        else:
            self.stats[rel] = stat_key(st)  # type: ignore[assignment]  # (a regular file has one)
            yield from self._file(full, rel, st)
            if st.st_nlink > 1:
                self._inodes[(st.st_dev, st.st_ino)] = rel

    def _file(self, full: str, rel: str, st: os.stat_result) -> Iterator[bytes]:
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # replaced by a link or gone since it was listed
        try:
            size = left = os.fstat(fd).st_size
            head = header(rel, st, tarfile.REGTYPE, size=size)
            pad = bytes(-size % tarfile.BLOCKSIZE)
            if size <= SMALL:  # one piece: header, content, padding
                data = os.read(fd, size)
                data += bytes(size - len(data))  # a file that shrank: zeros
                self.manifest[rel] = hashlib.sha256(data).hexdigest()
                yield b"".join((head, data, pad))
                return
            yield head
            digest = hashlib.sha256()
            while left > 0:
                chunk = os.read(fd, min(CHUNK, left)) or bytes(min(CHUNK, left))  # a file that shrank: zeros
                digest.update(chunk)
                left -= len(chunk)
                yield chunk
        finally:
            os.close(fd)
        self.manifest[rel] = digest.hexdigest()
        if pad:
            yield pad


#: files up to this size travel as one piece with their header
SMALL = 256 << 10
_TYPES = {tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE}
_HEAD = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_OCT7, _OCT11 = 8**7, 8**11


def header(name: str, st: os.stat_result, kind: bytes, *, size: int = 0, link: str = "") -> bytes:
    """The tar header of one member (GNU format, as ``tarfile`` writes it), made directly for the
    common case (short names, small numbers); ``tarfile`` makes the others (long names, 8 GiB+)."""
    mode, uid, gid, mtime = st.st_mode & 0o7777, st.st_uid, st.st_gid, int(st.st_mtime)
    raw = name.encode(tarfile.ENCODING, "surrogateescape") + (b"/" if kind == tarfile.DIRTYPE else b"")
    target = link.encode(tarfile.ENCODING, "surrogateescape")
    small = uid < _OCT7 and gid < _OCT7 and 0 <= mtime < _OCT11 and size < _OCT11
    if len(raw) > 100 or len(target) > 100 or not small:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime, info.uid, info.gid, info.size = mode, mtime, uid, gid, size
        info.type, info.linkname = kind, link
        return info.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape")
    buf = _HEAD.pack(
        raw,
        b"%07o\0" % mode,
        b"%07o\0" % uid,
        b"%07o\0" % gid,
        b"%011o\0" % size,
        b"%011o\0" % mtime,
        b"        ",
        kind,
        target,
        tarfile.GNU_MAGIC,
        b"",
        b"",
        b"",
        b"",
        b"",
    )
    chksum = sum(buf)
    return buf[:148] + b"%06o\0" % chksum + buf[155:]


def feed(chunks: Iterable[bytes], size: int = CHUNK // 4, depth: int = 2) -> Iterator[bytes]:
    """``chunks`` in pieces of about ``size`` bytes, made by a thread of their own while the
    caller sends the previous ones (at most ``depth`` pieces wait: memory stays bounded)."""
    pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                pieces.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            batch: list[bytes] = []
            held = 0
            for chunk in chunks:
                batch.append(chunk)
                held += len(chunk)
                if held >= size:
                    if not put(b"".join(batch)):
                        return
                    batch, held = [], 0
            if batch and not put(b"".join(batch)):
                return
            put(None)
        except BaseException as e:  # handed to the caller
            put(e)

    maker = threading.Thread(target=make, name="pipekit-feed", daemon=True)
    maker.start()
    try:
        while (item := pieces.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        maker.join()


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
