"""Copy mode by difference on one engine: the run's base copy of the workspace in a volume, and
each stage's view of it (an overlay volume: the base below, a volume of the stage's own above).

The base is made once per run (again when what the last stage to start was sent on top of it
grew past :data:`REBASE_FILES` or :data:`REBASE_BYTES`), by a container that is created, never
started, with the base volume mounted: the workspace is streamed into it and the container
removed. A stage's container mounts its overlay at ``/workspace`` and its upper volume (its own
layer) read-only at :data:`CHANGES_DIR`, from which the bring-back reads only what the stage created, changed or
deleted. A base is never written again once made, so stages that run at the same time each see
it as it was, plus their own layer. Every volume carries the run's labels: the run's cleanup, and
the sweep of lost runs, remove them. An engine on which an overlay volume does not mount (a
kernel without overlayfs, a rootless engine) gets the whole workspace copied, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipekit._backends.docker.engine import CONFLICT, LABEL_RUN, WORKDIR, container_name, stage_labels
from pipekit._workspace.archive import PRIVATE_DIRS, TreeStream
from pipekit._workspace.delta import WorkspaceBase, hidden_names
from pipekit.backend import StageSpec

if TYPE_CHECKING:
    import docker

__all__ = ["CHANGES_DIR", "Layers"]

#: where a stage's container sees its own layer (read-only)
CHANGES_DIR = "/.pipekit-changes"
#: a new base is made when the workspace differs from the current one by more than this
REBASE_BYTES = 32 << 20
REBASE_FILES = 2000
#: the overlay's options beyond its folders: a renamed folder and a changed mode are copied up
#: whole (no redirect or metadata-only copy that a bring-back of the layer alone would miss)
OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off"


class Layers:
    """The run's base copies and the stages' layers in one engine (``client()``)."""

    def __init__(self, client: Callable[[], docker.DockerClient]) -> None:
        self._client = client
        #: False once an overlay volume failed to mount in this engine: whole copies from then on
        self.works = True
        self._bases: dict[str, WorkspaceBase] = {}  # run id -> its newest base
        self.rebase_at = (REBASE_FILES, REBASE_BYTES)
        self._lock = threading.Lock()

    @property
    def api(self) -> Any:
        return self._client().api

    def base_for(self, spec: StageSpec) -> WorkspaceBase:
        """The run's base, made (or made anew) when the workspace differs from it by too much."""
        with self._lock:
            base = self._bases.get(spec.run_id)
            if base is not None:
                names, size = base.behind  # as the last stage to start found it
                if names <= self.rebase_at[0] and size <= self.rebase_at[1]:
                    return base
            base = self._make_base(spec)
            self._bases[spec.run_id] = base
            return base

    def _make_base(self, spec: StageSpec) -> WorkspaceBase:
        assert spec.image is not None
        name = container_name(spec.run_id, "workspace") + "-base"
        self.api.create_volume(name, labels=stage_labels(spec))
        binds = {name: {"bind": "/base", "mode": "rw"}}
        helper = self.api.create_container(
            spec.image,
            entrypoint=["sh"],
            labels=stage_labels(spec),
            host_config=self.api.create_host_config(binds=binds),
        )["Id"]
        start = time.monotonic()
        try:
            exclude = {*PRIVATE_DIRS, *hidden_names(spec.workspace, spec.hidden)}
            stream = TreeStream(spec.workspace, exclude=exclude, hidden=spec.hidden)
            self.api.put_archive(helper, "/base", iter(stream))
        finally:
            self.api.remove_container(helper, force=True)
        return WorkspaceBase(name, stream.stats, stream.manifest, stream.size, time.monotonic() - start)

    def stage_volumes(self, spec: StageSpec, base: WorkspaceBase) -> tuple[list[str], dict[str, dict[str, str]]]:
        """A stage's layer over ``base``: its volumes (the overlay first) and its container's binds."""
        prefix = container_name(spec.run_id, spec.stage)
        labels = stage_labels(spec)
        made: list[str] = []
        try:
            folders = {}
            for part in ("upper", "work"):
                made.append(f"{prefix}-{part}")
                folders[part] = self.api.create_volume(made[-1], labels=labels)["Mountpoint"]
            lower = self.api.inspect_volume(base.name)["Mountpoint"]
            options = f"lowerdir={lower},upperdir={folders['upper']},workdir={folders['work']},{OVERLAY_OPTIONS}"
            made.insert(0, f"{prefix}-view")
            self.api.create_volume(
                made[0],
                driver="local",
                driver_opts={"type": "overlay", "device": "overlay", "o": options},
                labels=labels,
            )
        except BaseException:
            self.remove(made)
            raise
        binds = {made[0]: {"bind": WORKDIR, "mode": "rw"}, made[1]: {"bind": CHANGES_DIR, "mode": "ro"}}
        return made, binds

    def remove(self, volumes: list[str]) -> None:
        """Remove a stage's volumes (once its container is gone); one in use stays for the run's cleanup."""
        from docker.errors import APIError, NotFound

        for name in volumes:
            try:
                self.api.remove_volume(name)
            except NotFound:
                pass
            except APIError as e:
                if e.status_code != CONFLICT:
                    raise

    def cleanup(self, run_id: str) -> None:
        """Remove every volume of the run (its containers are gone)."""
        self._bases.pop(run_id, None)
        stages = [n for n in self._volumes(run_id) if not n.endswith("-base")]
        self.remove(sorted(stages, key=lambda n: not n.endswith("-view")))  # a view before what it stacks
        left = self._volumes(run_id)
        if all(n.endswith("-base") for n in left):  # (a kept container's view still stacks the bases)
            self.remove(left)

    def _volumes(self, run_id: str) -> list[str]:
        listing = self.api.volumes(filters={"label": f"{LABEL_RUN}={run_id}"}) or {}
        return [str(v["Name"]) for v in listing.get("Volumes") or []]
