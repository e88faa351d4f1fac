"""The workspace as one EROFS image, streamed: how a base copy travels to an engine whose kernel
mounts an image file directly (Linux 6.12 and later, ``CONFIG_EROFS_FS_BACKED_BY_FILE``).

An engine writes one large file far faster than 20,000 small ones (its untar creates, writes,
chowns and times each), and removes it as fast. The image is uncompressed (every file's data in
whole 4 KiB blocks, as the kernel reads it, ``FLAT_PLAIN``), its metadata first, then each
folder's entries, then each link's target and each file's content in the order of the walk: the
whole layout is known from a walk of ``lstat`` alone, so the image is streamed as the files are
read, a piece at a time, and memory stays flat whatever the files' sizes. The workspace is the
folder ``ws`` of the image (:data:`TOP`): an overlay over a mount point where the image is not
mounted finds no ``ws`` and fails, instead of showing an empty workspace.

What goes in is what :class:`~pipekit._workspace.archive.TreeStream` would pack (same names, same
``manifest`` and ``stats``): folders, regular files, links; a file hard-linked within the tree is
one inode with two names; devices, sockets, fifos and the ``hidden`` files stay here. Owner,
mode and modification time travel as they are here. The format is the kernel's
(``Documentation/filesystems/erofs.rst``, ``fs/erofs/erofs_fs.h``); ``fsck.erofs`` and the
kernel's mount check it in the tests.
"""

from __future__ import annotations

import collections
import hashlib
import os
import stat
import struct
import tarfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from pipekit._workspace.delta import StatKey, stat_key
from pipekit._workspace.hosttree import CHUNK

__all__ = ["IMAGE_NAME", "TOP", "ErofsImage"]

#: the image's file name in its volume, and the folder inside it that holds the workspace
IMAGE_NAME = "base.erofs"
TOP = "ws"

_BLOCK = 4096
_MAGIC = 0xE0F5E1E2
_INODE = 64  # an extended inode (64-bit size, owner, mtime with nanoseconds)
_DIRENT = struct.Struct("<QHBB")  # nid, nameoff, file_type, reserved
_SUPER = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQB23s")
_EXTENDED = struct.Struct("<HHHHQIIIIqII16s")  # (mtime signed: before 1970 too)
_FT = {"f": 1, "d": 2, "l": 7}  # EROFS_FT_REG_FILE, _DIR, _SYMLINK
_DEVS: dict[int, int] = {}  # one int object per device number


class _Node:
    """One inode of the image (a name's kind, owner, mode, time and size; no path kept: ``rel``
    is the first name it was found under, relative to the workspace)."""

    __slots__ = (
        "blkaddr", "children", "dev", "gid", "ino", "kind", "links",
        "mode", "mtime", "nid", "rel", "size", "target", "uid",
    )  # fmt: skip

    def __init__(self, kind: str, rel: str, st: os.stat_result) -> None:
        self.kind, self.rel = kind, rel
        self.dev, self.ino = _DEVS.setdefault(st.st_dev, st.st_dev), st.st_ino  # (what was walked: read only that)
        self.mode, self.uid, self.gid, self.mtime = st.st_mode & 0o177777, st.st_uid, st.st_gid, st.st_mtime_ns
        self.children: list[_Node] | None = [] if kind == "d" else None
        self.target = b""
        self.size = st.st_size if kind == "f" else 0
        self.links = 1
        self.nid = self.blkaddr = 0

    @property
    def name(self) -> bytes:
        return os.fsencode(self.rel.rpartition("/")[2]) if self.rel else TOP.encode()


class ErofsImage:
    """The tree at ``root`` as an EROFS image: :attr:`size` bytes, known before the first one is
    made; iterate it once. ``exclude``: relative names left out with what is under them;
    ``hidden``: files left out wherever they are. ``manifest`` and ``stats`` as
    :class:`~pipekit._workspace.archive.TreeStream` fills them (the digests once iterated)."""

    def __init__(self, root: Path, exclude: Collection[str] = (), hidden: Collection[str] = ()) -> None:
        self.root = root
        self.exclude = frozenset(exclude)
        self.hidden = {(st.st_dev, st.st_ino) for st in map(_lstat, hidden) if st is not None}
        self.manifest: dict[str, str] = {}
        self.stats: dict[str, StatKey] = {}
        self._nodes: list[_Node] = []
        self._aliases: list[tuple[str, str]] = []  # a second name of a file, and its first
        self._walk()
        self.size = self._layout()

    # -- the walk: lstat only ----------------------------------------------------------------
    def _walk(self) -> None:
        st = os.stat(self.root)  # (the workspace may be reached through a link; nothing in it is followed)
        image_root, top = _Node("d", "", st), _Node("d", "", st)
        image_root.rel = "/"  # (its name is never used: it is nobody's child)
        assert image_root.children is not None
        image_root.children.append(top)
        self._nodes += [image_root, top]
        inodes: dict[tuple[int, int], _Node] = {}
        todo = collections.deque([top])
        while todo:
            folder = todo.popleft()
            assert folder.children is not None
            fd = self._open(folder, os.O_DIRECTORY)
            if fd < 0:
                continue  # gone, or not that folder any more, since it was listed: empty
            try:
                self._list(folder, fd, inodes, todo)
            finally:
                os.close(fd)

    def _open(self, node: _Node, flags: int) -> int:
        """A descriptor of ``node`` as the walk found it (-1: something else is there now, or nothing:
        a folder swapped for a link since, by a stage's bring-back, is never read through)."""
        path = os.path.join(self.root, node.rel) if node.rel else str(self.root)
        nofollow = os.O_NOFOLLOW if node.rel else 0
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | nofollow | flags)
        except OSError:
            return -1
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (node.dev, node.ino) or stat.S_IFMT(st.st_mode) != stat.S_IFMT(node.mode):
            os.close(fd)
            return -1
        return fd

    def _list(
        self, folder: _Node, fd: int, inodes: dict[tuple[int, int], _Node], todo: collections.deque[_Node]
    ) -> None:
        assert folder.children is not None
        prefix = f"{folder.rel}/" if folder.rel else ""
        with os.scandir(fd) as found:
            entries = sorted(found, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            if rel in self.exclude:
                continue
            try:
                st = entry.stat(follow_symlinks=False)  # (relative to the folder's descriptor)
                node = self._node(fd, entry.name, rel, st, inodes)
            except OSError:
                continue  # gone since it was listed
            if node is None:
                continue
            if node.rel != rel:  # a second name of a file
                self._aliases.append((rel, node.rel))
                folder.children.append(_Alias(os.fsencode(entry.name), node))  # type: ignore[arg-type]
                continue
            folder.children.append(node)
            if node.kind == "d":
                todo.append(node)

    def _node(
        self, fd: int, name: str, rel: str, st: os.stat_result, inodes: dict[tuple[int, int], _Node]
    ) -> _Node | None:
        if stat.S_ISDIR(st.st_mode):
            node = _Node("d", rel, st)
            self.manifest[rel] = "/"
        elif stat.S_ISLNK(st.st_mode):
            node = _Node("l", rel, st)
            target = os.readlink(name, dir_fd=fd)
            node.target = os.fsencode(target)
            node.size = len(node.target)
            self.manifest[rel] = "->" + target
        elif not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in self.hidden:
            return None  # devices, sockets, fifos stay here; so does the secrets file
        elif (st.st_dev, st.st_ino) in inodes:  # a hard link within the tree: the same inode
            first = inodes[(st.st_dev, st.st_ino)]
            first.links += 1
            self.stats[rel] = self.stats[first.rel]
            return first
        else:
            node = _Node("f", rel, st)
            if st.st_nlink > 1:
                inodes[(st.st_dev, st.st_ino)] = node
        self.stats[rel] = stat_key(st, node.target.decode(errors="surrogateescape") if node.kind == "l" else "")  # type: ignore[assignment]
        self._nodes.append(node)
        return node

    # -- the layout --------------------------------------------------------------------------
    def _layout(self) -> int:
        for i, node in enumerate(self._nodes):  # (metadata from block 0: no nid is 0, which readdir would skip)
            node.nid = (_BLOCK + i * _INODE) // 32
        block = 1 + -(-len(self._nodes) * _INODE // _BLOCK)
        self._data_start = block
        for node in self._nodes:
            if node.children is not None:
                node.children.sort(key=_name)
                node.blkaddr, node.size = block, _dir_size(node)
            else:
                node.blkaddr = block if node.size else 0
            block += -(-node.size // _BLOCK)
        return block * _BLOCK

    # -- the stream --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        now = time.time_ns()
        head = bytearray(_BLOCK)
        head[1024 : 1024 + _SUPER.size] = _SUPER.pack(
            _MAGIC, 0, 0, 12, 0, self._nodes[0].nid, len(self._nodes), now // 10**9, now % 10**9,
            self.size // _BLOCK, 0, 0, os.urandom(16), b"pipekit", 0, 0, 0, 0, 0, 0, 0, 0, 0, b"",
        )  # fmt: skip
        yield bytes(head)
        meta = bytearray()
        for i, node in enumerate(self._nodes):
            meta += _inode(node, i + 1)
            if len(meta) >= CHUNK:
                yield bytes(meta)
                meta.clear()
        meta += bytes(-(len(meta) + _BLOCK) % _BLOCK)
        yield bytes(meta)
        parents = self._parents()
        for node in self._nodes:
            if node.kind == "d":
                yield _dir_blocks(node, parents.get(id(node), node))
            elif node.kind == "l":
                yield node.target + bytes(-node.size % _BLOCK)
            else:
                yield from self._file(node)
        for alias, first in self._aliases:
            self.manifest[alias] = self.manifest[first]
            if first not in self.stats:
                self.stats.pop(alias, None)

    def _parents(self) -> dict[int, _Node]:
        parents = {id(self._nodes[0]): self._nodes[0]}
        for node in self._nodes:
            for child in node.children or ():
                if child.kind == "d":
                    parents[id(child)] = node
        return parents

    def _file(self, node: _Node) -> Iterator[bytes]:
        """The file's content as it is now, to exactly the size the layout gave it (a file that
        grew is cut, one that shrank is padded with zeros; its stat key then no longer matches
        what the next run finds, so that run sends it again)."""
        digest = hashlib.sha256()
        left = node.size
        fd = self._open(node, 0)  # (never a FIFO, a folder or a link put there since: zeros)
        if fd < 0:
            self.stats.pop(node.rel, None)  # (so the next run sends it, whatever it is then)
        try:
            while left > 0:
                chunk = (os.read(fd, min(CHUNK, left)) if fd >= 0 else b"") or bytes(min(CHUNK, left))
                digest.update(chunk)
                left -= len(chunk)
                yield chunk
        finally:
            if fd >= 0:
                os.close(fd)
        self.manifest[node.rel] = digest.hexdigest()
        yield bytes(-node.size % _BLOCK)

    def tar(self) -> Iterator[bytes]:
        """The image as the one member (:data:`IMAGE_NAME`) of a tar stream."""
        info = tarfile.TarInfo(IMAGE_NAME)
        info.size, info.mode, info.mtime = self.size, 0o600, int(time.time())
        yield info.tobuf(tarfile.GNU_FORMAT)
        yield from self
        yield bytes(-self.size % tarfile.BLOCKSIZE) + bytes(2 * tarfile.BLOCKSIZE)


def _inode(node: _Node, ino: int) -> bytes:
    if node.children is not None:
        nlink = 2 + sum(1 for c in node.children if c.kind == "d")
    else:
        nlink = node.links
    return _EXTENDED.pack(
        1,  # i_format: extended, FLAT_PLAIN
        0,
        node.mode,
        0,
        node.size,
        node.blkaddr,
        ino,
        node.uid,
        node.gid,
        node.mtime // 10**9,
        node.mtime % 10**9,
        nlink,
        b"",
    )


def _entries(node: _Node, parent: _Node) -> list[tuple[bytes, int, int]]:
    """A folder's entries in the order of their names, ``.`` and ``..`` among them."""
    entries = [(b".", node.nid, 2), (b"..", parent.nid, 2)]
    entries += [(_name(child), child.nid, _FT[child.kind]) for child in node.children or ()]
    entries.sort()
    return entries


def _packed(names: list[bytes]) -> list[list[int]]:
    """Which entries (by index) go into each block."""
    blocks: list[list[int]] = [[]]
    used = 0
    for i, name in enumerate(names):
        need = _DIRENT.size + len(name)
        if used + need > _BLOCK:
            blocks.append([])
            used = 0
        blocks[-1].append(i)
        used += need
    return blocks


def _dir_size(node: _Node) -> int:
    names = sorted([b".", b"..", *(_name(c) for c in node.children or ())])
    blocks = _packed(names)
    last = blocks[-1]
    return (len(blocks) - 1) * _BLOCK + len(last) * _DIRENT.size + sum(len(names[i]) for i in last)


def _dir_blocks(node: _Node, parent: _Node) -> bytes:
    entries = _entries(node, parent)
    out = bytearray()
    for block in _packed([e[0] for e in entries]):
        nameoff = len(block) * _DIRENT.size
        heads, names = bytearray(), bytearray()
        for i in block:
            name, nid, kind = entries[i]
            heads += _DIRENT.pack(nid, nameoff + len(names), kind, 0)
            names += name
        data = heads + names
        out += data + bytes(_BLOCK - len(data))
    return bytes(out)


class _Alias:
    """A second name of a file (a hard link within the tree): its entry in a folder."""

    __slots__ = ("kind", "name", "node")

    def __init__(self, name: bytes, node: _Node) -> None:
        self.name, self.node, self.kind = name, node, "f"

    @property
    def nid(self) -> int:
        return self.node.nid


def _name(child: _Node | _Alias) -> bytes:
    return child.name


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
