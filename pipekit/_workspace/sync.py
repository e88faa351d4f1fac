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

When the backend keeps a base copy of the workspace on the stage's machine
(``capabilities.layered_workspace``, :mod:`pipekit._workspace.delta`), only what differs from it is
shipped, and only the stage's own layer (what it created, changed or deleted) is brought back.
"""

from __future__ import annotations

import errno
import io
import os
import shlex
import tarfile
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import IO, Any, cast

from pipekit._core.util import slug
from pipekit._workspace.archive import PRIVATE_DIRS, TreeStream
from pipekit._workspace.delta import WorkspaceBase, changed_since, hidden_names, shipped
from pipekit._workspace.hosttree import CHUNK, HostTree, TreeRefused, is_private
from pipekit.backend import FileStreams, LayeredWorkspace, StageBackend, StageHandle
from pipekit.exceptions import StageFailed

__all__ = ["WorkspaceSync", "hidden_names"]

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _folder_lock(root: Path) -> threading.Lock:
    """One bring-back at a time into a folder (parallel stages bring theirs back in turn)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(os.path.realpath(root), threading.Lock())


class WorkspaceSync:
    """Keeps one stage's copy of the workspace and the pipeline's folder in step."""

    def __init__(self, backend: StageBackend, handle: StageHandle, root: Path, log: Any) -> None:
        self._backend = backend
        self._handle = handle
        self._root = root
        self._log = log
        #: relative name -> what the stage last had there (see TreeStream.manifest)
        self._known: dict[str, str] = {}
        #: the base copy the stage's workspace is a view of (None: a plain copy of its own)
        self._base: WorkspaceBase | None = None
        self._hidden = hidden_names(root, handle.spec.hidden)
        # mount mode: a container stage that makes a .git where there was none is refused (git on
        # this machine would run the hooks and config in it at the next command)
        self._watch_git = handle.spec.image is not None and not os.path.lexists(root / ".git")

    @property
    def active(self) -> bool:
        return not self._backend.capabilities.shares_workspace and self._handle.workspace_dir is not None

    def ship(self) -> None:
        """Copy the pipeline's folder (without .pipekit/ and the secrets file) into the stage's place:
        what differs from its base copy when it has one, or all of it."""
        if not self.active:
            return
        if self._backend.capabilities.layered_workspace:
            self._base = cast(LayeredWorkspace, self._backend).workspace_base(self._handle)
            if self._base is not None:
                self._ship_changes(self._base)
                return
        stream = TreeStream(self._root, exclude={*PRIVATE_DIRS, *self._hidden}, hidden=self._handle.spec.hidden)
        dest = str(self._handle.workspace_dir)
        if self._backend.capabilities.streams_files:
            cast(FileStreams, self._backend).put_stream(self._handle, iter(stream), dest)
        else:  # a backend that takes whole archives only
            self._backend.put_files(self._handle, b"".join(stream), dest)
        self._known = stream.manifest
        self._log.debug("workspace copied in", files=len(self._known), bytes=stream.size)

    def _ship_changes(self, base: WorkspaceBase) -> None:
        """Send what this machine's folder has that the base copy has not, and remove from the
        stage's view what this machine's folder no longer has."""
        changed, gone = changed_since(base.stats, shipped(self._root, self._handle.spec.hidden))
        known = dict(base.digests)
        if gone:
            self._remove(gone)
            drop = set(gone)
            for name in [n for n in known if _inside(n, drop)]:
                del known[name]
        size = 0
        if changed:
            stream = TreeStream(self._root, exclude=(), names=changed)
            cast(FileStreams, self._backend).put_stream(self._handle, iter(stream), str(self._handle.workspace_dir))
            known.update(stream.manifest)
            size = stream.size
        base.behind = (len(changed) + len(gone), size)  # (the backend makes a new base when that grows)
        self._known = known
        self._log.debug(
            "workspace changes copied in",
            base=base.name,
            base_bytes=base.size,
            base_s=round(base.seconds, 3),
            base_kept=base.kept,
            files=len(changed),
            gone=len(gone),
            bytes=size,
        )

    def _remove(self, names: list[str]) -> None:
        """Remove ``names`` (relative) from the stage's view of the workspace, with the image's ``rm``."""
        stage = self._handle.spec.stage
        top = str(self._handle.workspace_dir)
        for start in range(0, len(names), 500):
            paths = " ".join(shlex.quote(f"{top}/{n}") for n in names[start : start + 500])
            result = self._backend.exec(self._handle, f"rm -rf -- {paths}", {}, lambda *_: None, strict=False)
            if result.exit_code != 0:
                raise StageFailed(
                    f"Stage '{stage}': the files deleted from the workspace since the run started could not be"
                    f" removed from its copy ({result.stderr.strip()[:300] or result.exit_code}). pipekit removes"
                    " them with the image's `rm`, as the stage's user: use an image that has `rm` and a user that"
                    " may write in /workspace, or --workspace mount on an engine that sees this folder",
                    stage=stage,
                )

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
                tree = HostTree(str(self._root), shipped=self._known, hidden=self._hidden)
            except OSError as e:
                source.close()
                raise StageFailed(_failure(stage, "", e), stage=stage) from e
            if self._base is None:
                apply = _Apply(tree, self._known, self._hidden, self._log)
            else:
                apply = _ApplyChanges(tree, self._known, self._hidden, self._log, self._base.digests, self._exists)
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

    def _exists(self, name: str) -> bool:
        path = f"{self._handle.workspace_dir}/{name}"
        return cast(LayeredWorkspace, self._backend).exists(self._handle, path)

    def _open(self) -> IO[bytes] | None:
        path = str(self._handle.workspace_dir)
        if self._base is not None:  # only the stage's own layer: what it created, changed or deleted
            path = cast(LayeredWorkspace, self._backend).changes_dir
        if self._backend.capabilities.streams_files:
            return cast(FileStreams, self._backend).get_stream(self._handle, path)
        archive = self._backend.get_files(self._handle, path)
        return None if archive is None else io.BytesIO(archive)


def _failure(stage: str, path: str, e: BaseException) -> str:
    """What went wrong copying ``path`` back, and what to do."""
    where = f"{path}: " if path else ""
    if isinstance(e, TreeRefused):
        advice = e.advice or "pipekit never writes through a link on this machine: remove it, or make it a folder"
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
            self._take(tar, info, name, links)
        self.current = ""
        gone = (n for n in self.known if n not in self.now and not is_private(n, self.hidden))
        for name in sorted(gone, reverse=True):  # what is in a folder before the folder
            self.current = name
            self.changed += self.tree.remove(name, folders=True)
        self._links(links)

    def _take(self, tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, links: dict[str, str]) -> None:
        """One member of the stage's tree made this machine's; a symbolic link is only noted in
        ``links``, made once every file is in place. A folder or a link the stage got and kept as
        it was is left as it is here now (a parallel stage may have removed or replaced it)."""
        if info.isdir():
            self.now[name] = "/"
            self.tree.folder_modes[name] = info.mode  # (made again with it for a file written in it)
            if self.known.get(name) != "/":
                self.changed += self.tree.make_dir(name, info.mode)
        elif info.isreg():
            self._file(name, tar.extractfile(info), info.size, info.mode)
        elif info.islnk():
            self._hard_link(name, _relative(info.linkname), info.mode)
        elif info.issym():
            self.now[name] = "->" + info.linkname
            if self.known.get(name) != self.now[name]:
                links[name] = info.linkname

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


class _ApplyChanges(_Apply):
    """One bring-back from the stage's own layer over its base copy: what is not in the layer is
    as the stage got it. Deletions are the layer's whiteouts (a character device 0/0, which is
    also what a stage that makes one gets: the name disappears), the folders it made anew where
    one was (opaque: what was in them is gone, found out by asking whether one such name still
    exists), and the names it got from this layer (or that came back before) that it no longer
    holds. Only names pipekit shipped are ever deleted."""

    def __init__(
        self,
        tree: HostTree,
        known: dict[str, str],
        hidden: tuple[str, ...],
        log: Any,
        lower: Mapping[str, str],
        exists: Callable[[str], bool],
    ) -> None:
        super().__init__(tree, known, hidden, log)
        self.now = dict(known)
        self.lower, self.exists = lower, exists

    def run(self, tar: tarfile.TarFile) -> None:
        links: dict[str, str] = {}
        seen: set[str] = set()
        gone: set[str] = set()
        whiteouts: set[str] = set()
        folders: list[str] = []  # folders the stage got and that are in its layer: maybe made anew
        for info in tar:
            name = _relative(info.name)
            if name is None:
                self.log.warning("file not copied back", path=info.name, reason="a name that leaves the workspace")
                continue
            if (info.ischr() and info.devmajor == info.devminor == 0) or (
                info.islnk() and _relative(info.linkname) in whiteouts
            ):  # (the kernel may make every whiteout a hard link of one; only shipped names are deleted)
                whiteouts.add(name)
                seen.add(name)
                continue
            if not name or is_private(name, self.hidden):
                continue
            self.current = name
            seen.add(name)
            was = self.known.get(name)
            if was == "/" and not info.isdir():
                gone.update(n for n in self.known if n.startswith(name + "/"))
            if info.isdir() and was == "/":
                folders.append(name)
            self._take(tar, info, name, links)
        self.current = ""
        gone.update(whiteouts)
        gone.update(self._opaque(folders, seen))
        gone.update(n for n in self.known if n not in self.lower and n not in seen)
        self._delete(gone)
        self._links(links)

    def _opaque(self, folders: list[str], seen: set[str]) -> list[str]:
        """What was in the ``folders`` the stage made anew (removed, then made again)."""
        if not folders:
            return []
        index: dict[str, list[str]] = {}
        for name in self.known:
            if name in self.lower and name not in seen:
                index.setdefault(name.rpartition("/")[0], []).append(name)
        hidden: list[str] = []
        for folder in folders:
            kept = index.get(folder)
            if kept and not self.exists(kept[0]):
                hidden.extend(kept)
        return hidden

    def _delete(self, gone: set[str]) -> None:
        """Delete the names pipekit shipped that are ``gone`` (with what it shipped in them)."""
        names = {n for n in self.known if _inside(n, gone)}
        for name in sorted(names, reverse=True):  # what is in a folder before the folder
            if is_private(name, self.hidden):
                continue
            self.current = name
            self.now.pop(name, None)
            self.changed += self.tree.remove(name, folders=True)
        self.current = ""


def _inside(name: str, names: Collection[str]) -> bool:
    """Whether ``name`` is one of ``names`` or lies inside one of them."""
    while name:
        if name in names:
            return True
        name = name.rpartition("/")[0]
    return False


def _relative(name: str) -> str | None:
    """A member's name without its first part (the archived folder's own name); None when it
    would leave the folder."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        return None
    return "/".join(parts[1:])
