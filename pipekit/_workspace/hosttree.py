"""The pipeline's folder on this machine, written by copy mode's bring-back without ever following a link.

Every operation starts from a descriptor of the folder itself and opens each folder on the way
with ``O_NOFOLLOW``: a link a stage made (or anything else made of links) is never written through,
whatever it points at. Files are written to a temporary name next to their place and renamed over
it, so a hard link on this machine (``cp -al``, pnpm's store) is replaced, never written into.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
from collections.abc import Callable, Collection, Mapping
from typing import IO

__all__ = ["CHUNK", "HostTree", "TreeRefused", "is_private"]

CHUNK = 1 << 20  # files travel in pieces of this size: memory stays flat whatever their size
_ZEROS = bytes(CHUNK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: names that are never brought back from a stage, wherever they are in the tree: pipekit's own
#: state, and git's (hooks and config that git on this machine would run)
PRIVATE_NAMES = frozenset({".pipekit", ".git"})
MAX_HOPS = 40  # links followed to resolve one, as the kernel does


class TreeRefused(Exception):
    """A path of the stage that cannot be written on this machine (a link on the way, or what
    pipekit did not ship in a folder the stage made a file or a link); ``advice``: what to do."""

    def __init__(self, message: str, advice: str = "") -> None:
        super().__init__(message)
        self.advice = advice


def is_private(name: str, hidden: Collection[str] = ()) -> bool:
    """Whether ``name`` (relative, ``/``-separated) is or lies inside pipekit's state, a ``.git``, or a
    hidden file (the secrets file)."""
    if any(part in PRIVATE_NAMES for part in name.split("/")):
        return True
    return any(name == h or name.startswith(h + "/") for h in hidden)


class HostTree:
    """The folder ``root`` (trusted: the pipeline's own folder), and what is under it (untrusted).
    ``shipped``: the names (relative) pipekit gave the stage, the only ones a folder the stage made a
    file or a link loses on this machine, never one that is private (``hidden``: the secrets file)."""

    def __init__(self, root: str, *, shipped: Collection[str] = (), hidden: Collection[str] = ()) -> None:
        self.root = root
        self._shipped, self._hidden = shipped, hidden
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        #: the mode of a folder made again for what is written in it (a bring-back's, by name)
        self.folder_modes: dict[str, int] = {}

    def close(self) -> None:
        os.close(self._fd)

    # -- walking -----------------------------------------------------------------------------
    def parent(self, name: str, *, create: bool) -> tuple[int, str]:
        """A descriptor of the folder ``name`` is in (the caller closes it) and its base name.
        ``create`` makes missing folders; a link or a file on the way raises TreeRefused."""
        parts = name.split("/")
        fd = os.dup(self._fd)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    mode = self.folder_modes.get("/".join(parts[: i + 1]), 0o755) & 0o777  # (never setuid, ...)
                    os.mkdir(part, mode or 0o755, dir_fd=fd)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        where = "/".join(parts[: i + 1])
                        raise TreeRefused(f"{where} is not a folder on this machine (a link or a file)") from e
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def lstat(self, name: str) -> os.stat_result | None:
        """What is at ``name`` (links not followed), or None when nothing is, or a folder on the way is not one."""
        try:
            fd, base = self.parent(name, create=False)
        except (OSError, TreeRefused):
            return None
        try:
            return os.stat(base, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)

    def readlink(self, name: str) -> str | None:
        """The target of the link at ``name``; None when there is no link there."""
        st = self.lstat(name)
        if st is None or not stat.S_ISLNK(st.st_mode):
            return None
        fd, base = self.parent(name, create=False)
        try:
            return os.readlink(base, dir_fd=fd)
        finally:
            os.close(fd)

    def open_file(self, name: str) -> IO[bytes]:
        """The regular file at ``name`` for reading (a link there raises)."""
        fd, base = self.parent(name, create=False)
        try:
            file_fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)
        return os.fdopen(file_fd, "rb")

    # -- changing ----------------------------------------------------------------------------
    def make_dir(self, name: str, mode: int) -> bool:
        """A folder at ``name``, replacing a file or a link there; whether anything changed."""
        fd, base = self.parent(name, create=True)
        try:
            st = _lstat_at(fd, base)
            if st is not None and stat.S_ISDIR(st.st_mode):
                return False
            if st is not None:
                os.unlink(base, dir_fd=fd)
            os.mkdir(base, mode & 0o777 or 0o755, dir_fd=fd)  # never setuid, setgid or sticky
            return True
        finally:
            os.close(fd)

    def write_file(self, name: str, source: IO[bytes], size: int, mode: int, unchanged: str | None) -> tuple[str, bool]:
        """Stream ``source`` into the file at ``name``; returns its sha256 and whether the file was
        written. Nothing is written when this machine's file already holds the same bytes, or when
        the content's digest is ``unchanged`` (the stage got it so and did not change it): then a
        folder on the way that is gone here (a parallel stage removed it) is not made again."""
        try:
            fd, base = self.parent(name, create=unchanged is None)
        except FileNotFoundError:
            return self._write_where_gone(name, source, size, mode, unchanged)
        try:
            digest, tmp = _stream_to_temp(fd, base, source, size)
            if tmp is None:
                return digest, False
            if digest == unchanged:
                os.unlink(tmp, dir_fd=fd)
                return digest, False
            self._install(fd, tmp, fd, base, name, mode)
            return digest, True
        finally:
            os.close(fd)

    def _write_where_gone(
        self, name: str, source: IO[bytes], size: int, mode: int, unchanged: str | None
    ) -> tuple[str, bool]:
        """A file the stage got whose folder is gone here: read into a temporary file at the root,
        kept (its folders made again) only when the stage changed it."""
        digest, tmp = _stream_to_temp(self._fd, _temp_name(name), source, size)
        assert tmp is not None  # (nothing is at a fresh temporary name)
        if digest == unchanged:
            os.unlink(tmp, dir_fd=self._fd)
            return digest, False
        try:
            fd, base = self.parent(name, create=True)
        except BaseException:
            _unlink_quietly(self._fd, tmp)
            raise
        try:
            self._install(self._fd, tmp, fd, base, name, mode)
        finally:
            os.close(fd)
        return digest, True

    def _install(self, tmp_fd: int, tmp: str, fd: int, base: str, name: str, mode: int) -> None:
        """The temporary file ``tmp`` (in the folder ``tmp_fd``) made the file ``base`` of the folder
        ``fd`` (``name``), with ``mode``; the temporary file goes whatever happens."""
        try:
            os.chmod(tmp, mode & 0o777 or 0o644, dir_fd=tmp_fd)  # a stage's setuid bit stays there
            self._clear(fd, base, name)
            os.replace(tmp, base, src_dir_fd=tmp_fd, dst_dir_fd=fd)
        except BaseException:
            _unlink_quietly(tmp_fd, tmp)
            raise

    def make_link(self, name: str, target: str) -> bool:
        """A symbolic link at ``name`` (replacing what is there); whether anything changed."""
        fd, base = self.parent(name, create=True)
        try:
            st = _lstat_at(fd, base)
            if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(base, dir_fd=fd) == target:
                return False
            tmp = _temp_name(base)
            _unlink_quietly(fd, tmp)
            os.symlink(target, tmp, dir_fd=fd)
            try:
                self._clear(fd, base, name)
                os.replace(tmp, base, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                _unlink_quietly(fd, tmp)
                raise
            return True
        finally:
            os.close(fd)

    def remove(self, name: str, *, folders: bool = False) -> bool:
        """Remove the file or link at ``name`` (an empty folder too with ``folders``); whether it was."""
        try:
            fd, base = self.parent(name, create=False)
        except (OSError, TreeRefused):
            return False  # not on a real path of this machine's tree: nothing of it to remove
        try:
            st = _lstat_at(fd, base)
            if st is None:
                return False
            if stat.S_ISDIR(st.st_mode):
                if not folders:
                    return False
                try:
                    os.rmdir(base, dir_fd=fd)
                except OSError:
                    return False  # something else is in it now
                return True
            os.unlink(base, dir_fd=fd)
            return True
        finally:
            os.close(fd)

    def _clear(self, fd: int, base: str, name: str) -> None:
        """Make room for a file or a link at ``base``: a folder there (the stage made it something
        else) goes with what is in it when pipekit shipped all of it and none of it is private;
        else nothing of it is deleted (TreeRefused naming the first name in the way)."""
        st = _lstat_at(fd, base)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        kept = _in_the_way(fd, base, name, self._may_delete)
        if kept is not None:
            raise TreeRefused(
                f"{kept} would be deleted: the stage made {name} a file or a link, and pipekit deletes only"
                " what it copied into the stage (never the secrets file, a .git or .pipekit/)",
                advice=f"Move {kept} out of {name} on this machine, or leave {name} a folder in the stage",
            )
        _remove_tree(fd, base, name)

    def _may_delete(self, name: str) -> bool:
        return name in self._shipped and not is_private(name, self._hidden)

    # -- links -------------------------------------------------------------------------------
    def resolve(self, name: str, target: str, pending: Mapping[str, str | None]) -> str | None:
        """Where a link at ``name`` pointing at ``target`` leads, relative to the root, resolving
        every link on the way against the real tree (``pending``: the links about to be made, or
        None for a name about to be free). None when it leads out of the root, through or into a
        private name (``is_private``), or around in circles."""
        if target.startswith("/"):
            return None
        resolved: list[str] = [p for p in posixpath.dirname(name).split("/") if p]
        todo = [p for p in target.split("/") if p not in ("", ".")]
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if not resolved:
                    return None
                resolved.pop()
                continue
            resolved.append(part)
            here = "/".join(resolved)
            if is_private(here):
                return None
            link = pending[here] if here in pending else self.readlink(here)
            if link is None:
                continue
            hops += 1
            if hops > MAX_HOPS or link.startswith("/"):
                return None
            resolved.pop()
            todo = [p for p in link.split("/") if p not in ("", ".")] + todo
        return "/".join(resolved)


def _temp_name(base: str) -> str:
    return f".pipekit-tmp-{os.urandom(6).hex()}"


def _lstat_at(fd: int, base: str) -> os.stat_result | None:
    try:
        return os.stat(base, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _unlink_quietly(fd: int, base: str) -> None:
    try:
        os.unlink(base, dir_fd=fd)
    except OSError:
        pass


def _in_the_way(parent_fd: int, base: str, name: str, may_delete: Callable[[str], bool]) -> str | None:
    """The first name in the folder ``base`` (``name``, relative) that ``may_delete`` keeps, or None."""
    fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as listing:
            entries = list(listing)
        for entry in entries:
            inner = f"{name}/{entry.name}"
            if not may_delete(inner):
                return inner
            if entry.is_dir(follow_symlinks=False) and (kept := _in_the_way(fd, entry.name, inner, may_delete)):
                return kept
    finally:
        os.close(fd)
    return None


def _remove_tree(parent_fd: int, base: str, name: str) -> None:
    """Remove the folder ``base`` and everything in it, never following a link; a private name
    inside stops it (TreeRefused). The caller checked first that pipekit shipped all of it."""
    fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as listing:
            entries = list(listing)
        for entry in entries:
            if entry.name in PRIVATE_NAMES:
                raise TreeRefused(f"{name}/{entry.name} would be deleted (a stage made {name} a file or a link)")
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(fd, entry.name, f"{name}/{entry.name}")
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(base, dir_fd=parent_fd)


def _open_same(fd: int, base: str, size: int) -> IO[bytes] | None:
    """This machine's regular file at ``base`` for reading, when it has ``size`` bytes."""
    try:
        file_fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        return None
    st = os.fstat(file_fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        os.close(file_fd)
        return None
    return os.fdopen(file_fd, "rb")


def _stream_to_temp(fd: int, base: str, source: IO[bytes], size: int) -> tuple[str, str | None]:
    """Read ``source`` to its end, comparing it with this machine's file at ``base``; from the first
    difference on, write it into a temporary file next to it (runs of zeros left as holes). Returns
    the content's sha256 and the temporary file's name (None: this machine's file is the same)."""
    same = _open_same(fd, base, size)
    digest = hashlib.sha256()
    tmp: str | None = None
    out = None
    offset = 0
    try:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            if out is None and same is not None and same.read(len(chunk)) == chunk:
                offset += len(chunk)
                continue
            if out is None:
                tmp = _temp_name(base)
                out = _create(fd, tmp)
                if same is not None:
                    same.seek(0)
                    _copy_sparse(same, out, offset)
            _write_sparse(out, chunk)
            offset += len(chunk)
        if out is None and same is None:  # an empty file that is not here yet, or not the same
            tmp = _temp_name(base)
            out = _create(fd, tmp)
        if out is not None:
            out.truncate(offset)  # the holes at the end
            out.flush()
        elif same is not None and same.read(1):
            raise TreeRefused(f"{base} changed on this machine while it was compared")
    except BaseException:
        if tmp is not None:
            _unlink_quietly(fd, tmp)
        raise
    finally:
        if out is not None:
            out.close()
        if same is not None:
            same.close()
    return digest.hexdigest(), tmp


def _create(fd: int, name: str) -> IO[bytes]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(name, flags, 0o600, dir_fd=fd), "wb")


def _copy_sparse(source: IO[bytes], out: IO[bytes], size: int) -> None:
    left = size
    while left > 0:
        chunk = source.read(min(CHUNK, left))
        if not chunk:
            break
        _write_sparse(out, chunk)
        left -= len(chunk)


def _write_sparse(out: IO[bytes], chunk: bytes) -> None:
    if chunk == _ZEROS[: len(chunk)]:
        out.seek(len(chunk), os.SEEK_CUR)
    else:
        out.write(chunk)
