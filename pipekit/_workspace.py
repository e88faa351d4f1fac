"""The workspace in copy mode: shipped into a stage's place, and what the stage changed brought back.

A backend that shares the workspace (a bind mount on a local engine, the host) needs none of
this. For one that does not (a remote engine, a swarm node), the scheduler ships the pipeline's
folder in before the stage function runs and brings the files the stage created, changed or
deleted back afterwards, so that downstream stages, ``ctx.archive``, ``ctx.junit`` and the
stage cache see them exactly as with a bind mount. ``.pipekit/`` never travels.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pipekit._archive import PRIVATE_DIRS, link_stays_inside, members, pack_tree, safe_target, write_member
from pipekit.backend import StageBackend, StageHandle

__all__ = ["WorkspaceSync"]


class WorkspaceSync:
    """Keeps one stage's copy of the workspace and the pipeline's folder in step."""

    def __init__(self, backend: StageBackend, handle: StageHandle, root: Path, log: Any) -> None:
        self._backend = backend
        self._handle = handle
        self._root = root
        self._log = log
        self._known: dict[str, str] = {}  # relative name -> sha256, as the stage last had it
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return not self._backend.shares_workspace and self._handle.workspace_dir is not None

    def ship(self) -> None:
        """Copy the pipeline's folder into the stage's place."""
        if not self.active:
            return
        archive, self._known = pack_tree(self._root)
        self._backend.put_files(self._handle, archive, str(self._handle.workspace_dir))
        self._log.debug("workspace copied in", files=len(self._known), bytes=len(archive))

    def bring_back(self) -> None:
        """Write the files the stage created or changed into the pipeline's folder, and delete
        those it deleted. Links that lead out of the workspace are refused."""
        if not self.active:
            return
        with self._lock:
            archive = self._backend.get_files(self._handle, str(self._handle.workspace_dir))
            if archive is None:
                return
            seen: set[str] = set()
            changed = 0
            for m in members(archive):
                if not m.name or m.name.split("/", 1)[0] in PRIVATE_DIRS:
                    continue
                seen.add(m.name)
                changed += self._apply(m)
            for gone in set(self._known) - seen:
                target = safe_target(self._root, gone)
                if target is not None and (target.is_file() or target.is_symlink()):
                    target.unlink()
                    changed += 1
                self._known.pop(gone, None)
            self._log.debug("workspace copied back", changed=changed)

    def _apply(self, m: Any) -> int:
        target = safe_target(self._root, m.name)
        if target is None:
            self._log.warning("file not copied back", path=m.name, reason="a folder on its way leads out")
            return 0
        if m.kind == "link" and not link_stays_inside(m.name, m.target):
            self._log.warning("file not copied back", path=m.name, reason=f"a link out of the workspace ({m.target})")
            return 0
        if m.kind == "file":
            if self._known.get(m.name) == m.digest:
                return 0
            self._known[m.name] = m.digest
        elif m.kind == "dir" and target.is_dir():
            return 0
        elif m.kind == "link" and target.is_symlink() and str(target.readlink()) == m.target:
            return 0
        write_member(target, m)
        return 1
