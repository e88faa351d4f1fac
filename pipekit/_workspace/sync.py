"""The workspace in copy mode: shipped into a stage's place, and what the stage changed brought back.

A backend that shares the workspace (a bind mount on a local engine, the host) needs none of
this. For one that does not (a remote engine, a swarm node), the scheduler ships the pipeline's
folder in before the stage function runs and brings the files the stage created, changed or
deleted back afterwards, so that downstream stages, ``ctx.archive``, ``ctx.junit`` and the
stage cache see them exactly as with a bind mount.

Everything that comes back is untrusted. ``.pipekit/`` and the secrets file never travel;
nothing named ``.pipekit`` or ``.git`` (anywhere in the tree) and nothing at the secrets file's
place is ever brought back; no write follows a link on this machine (:mod:`pipekit._workspace.hosttree`); a
link is brought back only when, resolved against the real tree, it stays inside the workspace and
out of those private places. Both directions stream: memory stays flat whatever the files' sizes.
A copy-back that fails fails the stage.
"""

from __future__ import annotations

import errno
import io
import os
import tarfile
import threading
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any, cast

from pipekit._core.util import slug
from pipekit._workspace.archive import PRIVATE_DIRS, TreeStream
from pipekit._workspace.hosttree import CHUNK, HostTree, TreeRefused, is_private
from pipekit.backend import FileStreams, StageBackend, StageHandle
from pipekit.exceptions import StageFailed

__all__ = ["WorkspaceSync", "hidden_names"]

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _folder_lock(root: Path) -> threading.Lock:
    """One bring-back at a time into a folder (parallel stages bring theirs back in turn)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(os.path.realpath(root), threading.Lock())


def hidden_names(root: Path, files: Collection[str]) -> tuple[str, ...]:
    """The names, relative to ``root``, of those ``files`` (absolute paths) that lie under it."""
    real_root = os.path.realpath(root)
    names = []
    for f in files:
        real = os.path.realpath(f)
        if real.startswith(real_root + os.sep):
            names.append(Path(os.path.relpath(real, real_root)).as_posix())
    return tuple(names)


class WorkspaceSync:
    """Keeps one stage's copy of the workspace and the pipeline's folder in step."""

    def __init__(self, backend: StageBackend, handle: StageHandle, root: Path, log: Any) -> None:
        self._backend = backend
        self._handle = handle
        self._root = root
        self._log = log
        #: relative name -> what the stage last had there (see TreeStream.manifest)
        self._known: dict[str, str] = {}
        self._hidden = hidden_names(root, handle.spec.hidden)
        # mount mode: a container stage that makes a .git where there was none is refused (git on
        # this machine would run the hooks and config in it at the next command)
        self._watch_git = handle.spec.image is not None and not os.path.lexists(root / ".git")

    @property
    def active(self) -> bool:
        return not self._backend.capabilities.shares_workspace and self._handle.workspace_dir is not None

    def ship(self) -> None:
        """Copy the pipeline's folder (without .pipekit/ and the secrets file) into the stage's place."""
        if not self.active:
            return
        stream = TreeStream(self._root, exclude={*PRIVATE_DIRS, *self._hidden}, hidden=self._handle.spec.hidden)
        dest = str(self._handle.workspace_dir)
        if self._backend.capabilities.streams_files:
            cast(FileStreams, self._backend).put_stream(self._handle, iter(stream), dest)
        else:  # a backend that takes whole archives only
            self._backend.put_files(self._handle, b"".join(stream), dest)
        self._known = stream.manifest
        self._log.debug("workspace copied in", files=len(self._known), bytes=stream.size)

    def bring_back(self) -> None:
        """Write what the stage created or changed into the pipeline's folder, and delete what it
        deleted. Raises StageFailed, naming the path, when that cannot be done."""
        if not self.active:
            self._check_git()
            return
        stage = self._handle.spec.stage
        with _folder_lock(self._root):
            source = self._open()
            if source is None:
                return
            try:
                tree = HostTree(str(self._root))
            except OSError as e:
                source.close()
                raise StageFailed(_failure(stage, "", e), stage=stage) from e
            apply = _Apply(tree, self._known, self._hidden, self._log)
            try:
                with source, tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK) as tar:
                    apply.run(tar)
            except (OSError, TreeRefused, tarfile.TarError) as e:
                raise StageFailed(_failure(stage, apply.current, e), stage=stage) from e
            except Exception as e:  # the engine's stream broke (its node went away, ...)
                raise StageFailed(
                    f"Stage '{stage}': its files could not be copied back into the workspace ({e}); the workspace"
                    " may hold part of them. Run the stage again",
                    stage=stage,
                ) from e
            finally:
                apply.tree.close()
            self._known = apply.now
            self._log.debug("workspace copied back", changed=apply.changed)

    def _check_git(self) -> None:
        """Mount mode: a .git a container stage made where there was none is moved aside, out of
        git's way, and fails the stage."""
        if not self._watch_git or not os.path.lexists(self._root / ".git"):
            return
        stage = self._handle.spec.stage
        aside = self._root / ".pipekit" / "refused" / f"git-made-by-{slug(stage)}-{os.urandom(3).hex()}"
        aside.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.rename(self._root / ".git", aside)  # (the name itself: a link is moved, not followed)
        raise StageFailed(
            f"Stage '{stage}' made a .git in the workspace, which had none: git on this machine would run the"
            f" hooks and config a stage wrote there. pipekit moved it to {aside.relative_to(self._root)}. Make"
            " repositories outside /workspace (or use --workspace copy, which never brings a .git back)",
            stage=stage,
        )

    def _open(self) -> IO[bytes] | None:
        path = str(self._handle.workspace_dir)
        if self._backend.capabilities.streams_files:
            return cast(FileStreams, self._backend).get_stream(self._handle, path)
        archive = self._backend.get_files(self._handle, path)
        return None if archive is None else io.BytesIO(archive)


def _failure(stage: str, path: str, e: BaseException) -> str:
    """What went wrong copying ``path`` back, and what to do."""
    where = f"{path}: " if path else ""
    if isinstance(e, TreeRefused):
        advice = "pipekit never writes through a link on this machine: remove it, or make it a folder"
        return f"Stage '{stage}': {where}not copied back into the workspace: {e}. {advice}"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "the disk of the workspace is full: free space and run the stage again"
    elif isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "pipekit may not write there: check the permissions of that path, then run the stage again"
    else:
        advice = "the workspace may hold part of the stage's changes: run the stage again"
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return f"Stage '{stage}': {where}could not be copied back into the workspace ({why}); {advice}"


class _Apply:
    """One bring-back: the stage's tree, as a tar stream, made this machine's."""

    def __init__(self, tree: HostTree, known: dict[str, str], hidden: tuple[str, ...], log: Any) -> None:
        self.tree, self.known, self.hidden, self.log = tree, known, hidden, log
        self.now: dict[str, str] = {}  # what the stage has now (the next bring-back's known)
        self.changed = 0
        self.current = ""  # the path being copied back (for an error message)

    def run(self, tar: tarfile.TarFile) -> None:
        links: dict[str, str] = {}
        for info in tar:
            name = _relative(info.name)
            if name is None:
                self.log.warning("file not copied back", path=info.name, reason="a name that leaves the workspace")
                continue
            if not name or is_private(name, self.hidden):
                continue
            self.current = name
            if info.isdir():
                self.now[name] = "/"
                self.changed += self.tree.make_dir(name, info.mode)
            elif info.isreg():
                self._file(name, tar.extractfile(info), info.size, info.mode)
            elif info.islnk():
                self._hard_link(name, _relative(info.linkname), info.mode)
            elif info.issym():
                self.now[name] = "->" + info.linkname
                links[name] = info.linkname
        self.current = ""
        gone = (n for n in self.known if n not in self.now and not is_private(n, self.hidden))
        for name in sorted(gone, reverse=True):  # what is in a folder before the folder
            self.current = name
            self.changed += self.tree.remove(name, folders=True)
        self._links(links)

    def _file(self, name: str, source: IO[bytes] | None, size: int, mode: int) -> None:
        digest, written = self.tree.write_file(name, source or io.BytesIO(), size, mode, self.known.get(name))
        self.now[name] = digest
        self.changed += written

    def _hard_link(self, name: str, first: str | None, mode: int) -> None:
        """A file the stage's tree holds twice (``cp -al``, pnpm): the copy here gets its content."""
        if first is None or first not in self.now or self.now[first].startswith(("/", "->")):
            self.log.warning("file not copied back", path=name, reason="a hard link to a file that is not copied back")
            self.now[name] = self.known.get(name, "")  # left as it is here
            return
        with self.tree.open_file(first) as source:
            self._file(name, source, os.fstat(source.fileno()).st_size, mode)

    def _links(self, links: dict[str, str]) -> None:
        """Make the links that, resolved against the real tree (with each other), stay inside the
        workspace and out of its private places; remove what is at the others' names."""
        pending: dict[str, str | None] = dict(links)
        while True:
            refused = [n for n, t in pending.items() if t is not None and self.tree.resolve(n, t, pending) is None]
            if not refused:
                break
            for name in refused:
                pending[name] = None
        for name, target in links.items():
            self.current = name
            if pending[name] is None:
                self.log.warning(
                    "link not copied back",
                    path=name,
                    target=target,
                    reason="it leads out of the workspace or"
                    " into a place no stage may write (.pipekit/, .git/, the secrets file)",
                )
                self.changed += self.tree.remove(name, folders=True)
            else:
                self.changed += self.tree.make_link(name, target)
        self.current = ""


def _relative(name: str) -> str | None:
    """A member's name without its first part (the archived folder's own name); None when it
    would leave the folder."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        return None
    return "/".join(parts[1:])
