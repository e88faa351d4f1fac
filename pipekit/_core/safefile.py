"""Files in folders a stage can write to, read and written without following a stage's links.

A container stage can put anything in the workspace: a link where pipekit will write the JUnit
file, a link swapped in between a check and a read. Every path here is walked one component at a
time from a folder already open (``openat``-style), each opened with ``O_NOFOLLOW``:

- :class:`Beneath` reads files under a root (the workspace): a link is followed only when it
  stays inside (resolved here, against the real tree, never by the kernel), and nothing under
  ``.pipekit/`` or ``.git/`` is handed out, whatever route leads there.
- :func:`write_file` writes a file atomically (a temporary file made with ``O_EXCL|O_NOFOLLOW``
  in the same folder, then ``os.replace``); inside the workspace, a folder on the way that is a
  link is refused, and a link at the file's own place is replaced, never written through.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["PRIVATE", "Beneath", "UnsafePath", "read_regular", "remove_beneath", "write_file"]

#: pipekit's own state and git's: never read for a stage, whatever route leads there
PRIVATE = (".pipekit", ".git")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_MAX_LINKS = 40


class UnsafePath(OSError):
    """A path pipekit does not read or write: a link where none may be, a way out of the folder,
    pipekit's own state. The message (``str()`` and ``strerror``) names the path and why."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return str(self.strerror)


class Beneath:
    """A folder (the workspace) open once; files under it read without leaving it."""

    def __init__(self, root: str | os.PathLike[str], hidden: Iterable[str | os.PathLike[str]] = ()) -> None:
        """``hidden``: files never handed out either (the secrets file), by identity, so no link
        or hard link leads to them."""
        self.root = Path(root)
        self.fd = os.open(self.root, _DIR)
        #: (device, inode) of what is never read, and what to call it
        self._private: dict[tuple[int, int], str] = {}
        for name in PRIVATE:
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except OSError:
                continue
            self._private[(st.st_dev, st.st_ino)] = f"under {name}/"
        for path in hidden:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self._private[(st.st_dev, st.st_ino)] = "the secrets file"

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Beneath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_private(self, shown: str, name: str, fd: int, top: bool) -> None:
        st = os.fstat(fd)
        what = self._private.get((st.st_dev, st.st_ino))
        if what is None and top and name.lower() in PRIVATE:
            what = f"under {name.lower()}/"
        if what is not None:
            os.close(fd)
            raise UnsafePath(f"{shown} is {what}, which pipekit never hands to a stage")

    def open(self, rel: str, flags: int = os.O_RDONLY) -> int:
        """A descriptor for ``rel`` (relative to the root), every component opened with
        ``O_NOFOLLOW`` from its folder; links are resolved here and must stay inside.
        FileNotFoundError/NotADirectoryError when it is not there; UnsafePath when refused."""
        if rel.startswith("/"):
            raise UnsafePath(f"{rel} is not a path inside the workspace")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        stack = [os.dup(self.fd)]
        hops = 0
        try:
            while parts:
                name = parts.pop(0)
                if name == "..":
                    if len(stack) == 1:
                        raise UnsafePath(f"{rel} leads out of the workspace")
                    os.close(stack.pop())
                    continue
                here = stack[-1]
                st = os.stat(name, dir_fd=here, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    target = os.readlink(name, dir_fd=here)
                    if target.startswith("/"):
                        raise UnsafePath(f"{rel} is a link to {target}, outside the workspace")
                    if hops > _MAX_LINKS:
                        raise UnsafePath(f"{rel}: too many links on the way")
                    parts = target.split("/") + parts
                    continue
                last = not parts
                fd = _open_nofollow(rel, name, (flags | os.O_NONBLOCK) if last else _DIR, here)
                self._check_private(rel, name, fd, len(stack) == 1)
                if last:
                    return fd
                stack.append(fd)
            return os.dup(stack[-1])
        finally:
            for fd in stack:
                os.close(fd)

    def read(self, rel: str) -> tuple[bytes, os.stat_result]:
        """The content of the regular file ``rel`` and its stat, from one descriptor."""
        fd = self.open(rel)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"{rel} is not a regular file")
            os.set_blocking(f.fileno(), True)
            return f.read(), st

    def kind(self, rel: str) -> str | None:
        """``file``, ``dir``, ``other`` for what ``rel`` resolves to (inside), None when missing."""
        try:
            fd = self.open(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
        return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"

    def matching(self, patterns: Iterable[str], match: Callable[[str, str], bool]) -> list[str]:
        """The regular files (names relative to the root) that ``patterns`` select: a path names a
        file or a folder (every file under it); a glob (``match(pattern, name)``) is matched against
        every file, leaving out ``.git/``, ``.pipekit/`` and ``__pycache__/``. Links count only when
        they resolve inside (UnsafePath otherwise); FIFOs and devices never count."""
        found: set[str] = set()
        for pattern in patterns:
            if any(c in pattern for c in "*?["):
                names = [n for n in self.walk("", skip=(*PRIVATE, "__pycache__")) if match(pattern, n)]
            else:
                name = posixpath.normpath(pattern)
                kind = self.kind(name)
                names = [name] if kind == "file" else list(self.walk(name)) if kind == "dir" else []
            found |= {n for n in names if self.kind(n) == "file"}
        return sorted(found)

    def walk(self, rel: str = "", skip: tuple[str, ...] = ()) -> Iterator[str]:
        """Names (relative to the root) of the files and links under the folder ``rel``, walked
        through descriptors without entering links; folders named in ``skip`` and pipekit's own
        state are left out. What a name is gets decided when it is opened."""
        for name, _ in self.entries(rel, skip):
            yield name

    def entries(self, rel: str = "", skip: tuple[str, ...] = ()) -> Iterator[tuple[str, os.stat_result]]:
        """:meth:`walk`'s names, each with its ``lstat`` (a regular file's, or a link's own)."""
        rel = "" if posixpath.normpath(rel or ".") == "." else posixpath.normpath(rel)
        fd = self.open(rel) if rel else os.dup(self.fd)
        yield from self._walk(fd, rel, skip)

    def scan(self, rel: str = "", skip: tuple[str, ...] = ()) -> list[tuple[str, os.stat_result]]:
        """:meth:`entries` in no particular order, as one list: the same names left out, the same
        folders entered (by descriptor, ``O_NOFOLLOW``, each checked to be the folder listed), at
        the cost of one ``lstat`` a name (the stage cache's walk of 100,000 files)."""
        rel = "" if posixpath.normpath(rel or ".") == "." else posixpath.normpath(rel)
        out: list[tuple[str, os.stat_result]] = []
        private = self._private
        stack = [(self.open(rel) if rel else os.dup(self.fd), f"{rel}/" if rel else "")]
        try:
            while stack:
                fd, prefix = stack[-1]
                with os.scandir(fd) as found:
                    entries = list(found)
                stack.pop()
                try:
                    for e in entries:
                        if not prefix and e.name.lower() in PRIVATE:
                            continue
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue  # gone while walked
                        if (st.st_dev, st.st_ino) in private:
                            continue  # left out of a walk; a link to it is refused when opened
                        mode = st.st_mode
                        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                            out.append((prefix + e.name, st))
                        elif stat.S_ISDIR(mode) and e.name not in skip:
                            try:
                                sub = _open_nofollow(prefix + e.name, e.name, _DIR, fd)
                            except (UnsafePath, OSError):
                                continue  # changed while walked: not taken
                            if not os.path.samestat(os.fstat(sub), st):
                                os.close(sub)
                                continue  # changed while walked: not taken
                            stack.append((sub, f"{prefix}{e.name}/"))
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:
                os.close(fd)
        return out

    def _walk(self, fd: int, prefix: str, skip: tuple[str, ...]) -> Iterator[tuple[str, os.stat_result]]:
        # depth first, each folder's entries by name; a stack, not recursion: a deep tree costs
        # no generator per level for every name it yields
        stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = [(fd, prefix, self._listed(fd))]
        private = self._private
        try:
            while stack:
                fd, prefix, entries = stack[-1]
                for e in entries:
                    name = f"{prefix}/{e.name}" if prefix else e.name
                    if not prefix and e.name.lower() in PRIVATE:
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone while walked
                    if (st.st_dev, st.st_ino) in private:
                        continue  # left out of a walk; a link to it is refused when opened
                    if stat.S_ISDIR(st.st_mode):
                        if e.name in skip:
                            continue
                        try:
                            sub = _open_nofollow(name, e.name, _DIR, fd)
                        except (UnsafePath, OSError):
                            continue  # changed while walked: not taken
                        if not os.path.samestat(os.fstat(sub), st):
                            os.close(sub)
                            continue  # changed while walked: not taken
                        stack.append((sub, name, self._listed(sub)))
                        break
                    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                        yield name, st
                else:
                    stack.pop()
                    os.close(fd)
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    @staticmethod
    def _listed(fd: int) -> Iterator[os.DirEntry[str]]:
        """A folder's entries by name (``fd`` closed when it cannot be read)."""
        try:
            with os.scandir(fd) as found:
                return iter(sorted(found, key=lambda e: e.name))
        except BaseException:
            os.close(fd)
            raise


def _open_nofollow(shown: str, name: str, flags: int, dir_fd: int) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a link now, where there was none a moment ago
            raise UnsafePath(f"{shown} became a link while pipekit read it") from e
        raise


def remove_beneath(root: str | os.PathLike[str], rel: str) -> int:
    """Remove the file or folder ``rel`` under ``root`` (pipekit's own ``.pipekit/``) and all it
    holds; the bytes its files took. No link is ever followed: a folder on the way that is a link
    is refused (UnsafePath), a link inside is removed as a link, not what it points to. A path
    that is not there frees 0."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or rel.startswith("/"):
        raise UnsafePath(f"{rel} is not a path inside {root}")
    fd = os.open(root, _DIR | os.O_NOFOLLOW)
    try:
        for name in parts[:-1]:
            try:
                inner = _open_nofollow(rel, name, _DIR, fd)
            except FileNotFoundError:
                return 0
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(
                        f"{rel}: {name} is not a folder (a link?); pipekit does not remove through it"
                    ) from e
                raise
            os.close(fd)
            fd = inner
        return _remove_at(fd, parts[-1])
    finally:
        os.close(fd)


def _remove_at(dir_fd: int, name: str) -> int:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    fd = _open_nofollow(name, name, _DIR, dir_fd)
    try:
        freed = sum(_remove_at(fd, child) for child in os.listdir(fd))
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
    return freed


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """A regular file's content, its last component opened without following a link and without
    waiting on a FIFO (a Dockerfile a stage replaced, say); UnsafePath otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        os.set_blocking(f.fileno(), True)
        return f.read()


def _parent(target: str, root: tuple[int, int]) -> int:
    """The folder of the absolute path ``target``, open (the root identified by device and inode).
    Missing folders are made. Outside the root, links are the user's own and are followed
    (resolved here); inside, a folder that is a link is refused."""
    parts = target.split("/")[1:-1]
    stack: list[tuple[int, bool]] = []
    hops = 0

    def push(fd: int, inside: bool) -> None:
        st = os.fstat(fd)
        stack.append((fd, inside or (st.st_dev, st.st_ino) == root))

    push(os.open("/", _DIR), False)
    try:
        while parts:
            name = parts.pop(0)
            here, inside = stack[-1]
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            try:
                st = os.stat(name, dir_fd=here, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o777, dir_fd=here)
                except FileExistsError:
                    pass
                st = os.stat(name, dir_fd=here, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if inside:
                    raise UnsafePath(
                        f"{name} (on the way to {target}) is a link inside the workspace; pipekit does not"
                        " write through links there (a stage may have made it)"
                    )
                hops += 1
                if hops > _MAX_LINKS:
                    raise UnsafePath(f"{target}: too many links on the way")
                link = os.readlink(name, dir_fd=here)
                if link.startswith("/"):
                    for fd, _ in stack[1:]:
                        os.close(fd)
                    del stack[1:]
                parts = link.split("/") + parts
                continue
            push(_open_nofollow(target, name, _DIR, here), inside)
        return stack.pop()[0]
    finally:
        for fd, _ in stack:
            os.close(fd)


def write_file(
    target: str | os.PathLike[str], content: str | bytes | BinaryIO, *, root: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``content`` (text as UTF-8, bytes, or a binary file copied in chunks) to ``target``,
    making its folders; the path written.

    ``root`` is the workspace (default: the current folder): below it, no folder on the way may
    be a link. The file is written to a temporary file in its folder (``O_EXCL|O_NOFOLLOW``) and
    moved in place with ``os.replace``, so a link at ``target`` is replaced, never followed, and
    a reader never sees half a file. OSError when it cannot be written, UnsafePath when refused.
    """
    path = Path(os.path.abspath(target))
    data = content.encode("utf-8") if isinstance(content, str) else content
    top = os.stat(os.path.abspath(root) if root is not None else os.getcwd())
    folder = _parent(str(path), (top.st_dev, top.st_ino))
    try:
        if path.name in ("", ".", ".."):
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        try:
            if stat.S_ISDIR(os.stat(path.name, dir_fd=folder, follow_symlinks=False).st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        except FileNotFoundError:
            pass
        tmp = f".{path.name}.{uuid.uuid4().hex[:8]}.pipekit-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, bytes):
                    f.write(data)
                else:
                    shutil.copyfileobj(data, f)
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=folder)
            except OSError:
                pass
            raise
    finally:
        os.close(folder)
    return path
