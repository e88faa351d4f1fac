"""A folder's listing by GNU ``find``: every name under it with what ``lstat`` says of it, made by a
C walker in a process of its own (the stage cache's fast path, :mod:`pipekit._core.statcache`).

The listing is only ever compared with an earlier one: equal listings mean no name under the
folder was added, removed, renamed or changed (size, mtime, ctime, inode, device, type and
permission bits), which is what lets a cached rerun of 100,000 unchanged files skip loading their
stat-cache entries. Nothing is read but names and their stat: no file is opened, no link is
followed (``-P``: a link is listed as a link), and the folder is handed to ``find`` as a
descriptor opened here component by component with ``O_NOFOLLOW`` (``/proc/self/fd/N/``), so no
link on the way leads it elsewhere; a folder swapped for a link while ``find`` walks is not
entered (gnulib's fts checks each folder it enters against the ``lstat`` it listed). The folders
a walk of the workspace leaves out (``.git``, ``.pipekit`` at the top, in any case, and folders
named as ``skip`` anywhere) are left out here too, unread.

None when there is no GNU ``find`` (another system's find, a container without findutils) or it
could not list everything (a folder it may not read, a name gone while it walked): the caller
then does without.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

from pipekit._core.safefile import _DIR, PRIVATE, _open_nofollow

__all__ = ["listing"]

#: type, permission bits, size, inode, device, mtime, ctime (ns, as seconds.fraction), the name
_FORMAT = "%y %m %s %i %D %T@ %C@ %P\\0"
_find: list[str | None] = []


def _gnu_find() -> str | None:
    """The path of GNU find, None when there is none (asked once per process)."""
    if not _find:
        path = shutil.which("find")
        try:
            out = subprocess.run([path, "--version"], capture_output=True, timeout=10).stdout if path else b""
        except (OSError, subprocess.SubprocessError):
            out = b""
        _find.append(path if b"GNU findutils" in out else None)
    return _find[0]


def _open_root(top: int, rel: str) -> tuple[int, bytes]:
    """A descriptor of the folder ``rel`` under the folder ``top``, opened one component at a time
    without following a link, and the stat of each component (what the listing's head says);
    FileNotFoundError/NotADirectoryError/UnsafePath when a component is not a real folder."""
    fd = os.dup(top)
    head = []
    try:
        for name in [p for p in rel.split("/") if p]:
            sub = _open_nofollow(rel, name, _DIR, fd)
            os.close(fd)
            fd = sub
            st = os.fstat(fd)
            head.append(f"{name} {st.st_mode} {st.st_ino} {st.st_dev} {st.st_mtime_ns} {st.st_ctime_ns}")
    except BaseException:
        os.close(fd)
        raise
    return fd, "\0".join(head).encode("utf-8", "surrogateescape")


def listing(top: int, rel: str, skip: tuple[str, ...]) -> bytes | None:
    """The listing of the folder ``rel`` under the workspace open as ``top`` (``""``: the whole
    workspace, its ``.git``/``.pipekit`` left out), folders named in ``skip`` left out anywhere;
    None when GNU find is not there or could not list it all. OSError when ``rel`` is not a real
    folder reached through real folders."""
    find = _gnu_find()
    if find is None:
        return None
    fd, head = _open_root(top, rel)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise NotADirectoryError(rel)
        start = f"/proc/self/fd/{fd}/"
        prune: list[str] = []
        for name in skip:
            prune += ["-o", "-type", "d", "-name", name]
        if not rel:  # as the walk of the workspace: its own state never, whatever the case of its name
            for name in PRIVATE:
                prune += ["-o", "-ipath", start + name]
        argv = [find, "-P", start, "(", "-false", *prune, ")", "-prune", "-o", "-printf", _FORMAT]
        env = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, pass_fds=(fd,), env=env
        ) as proc:
            assert proc.stdout is not None
            out = proc.stdout.read()
        if proc.returncode != 0:
            return None
        return head + b"\0\0" + out
    finally:
        os.close(fd)
