"""Copy mode by difference on one engine: the base copy of the workspace in a volume, kept across
runs, and each stage's view of it (an overlay volume: the base below, a volume of the stage's own above).

A base is made by a container that is created, never started, with the base volume mounted: the
workspace is streamed into it and the container removed; then a small companion volume
(``NAME-ok``) says it is complete, and this machine keeps a record of what it holds
(:mod:`pipekit._workspace.keptbase`). The next run of the same folder uses it again and ships
only what differs; a new base is made when the workspace differs from it by more than
:data:`REBASE_FILES` or :data:`REBASE_BYTES` (what the last stage to start was sent on top of it).
Where the engine's kernel mounts an EROFS image file directly (Linux 6.12 and later), the base is
one image file (:mod:`pipekit._workspace.erofs`) in the base volume, and a second volume
(``NAME-fs``) mounts it; a small container of the run's (the *holder*, ``sh`` waiting on its
input, no network) keeps that mounted while the run's stages stack their overlays on it: one
large file travels and is written, instead of one file per file of the workspace, and removing
the base removes one file. Elsewhere the base is the workspace unpacked in the volume.
A stage's container mounts its overlay at ``/workspace`` and its upper volume (its own layer)
read-only at :data:`CHANGES_DIR`, from which the bring-back reads only what the stage created,
changed or deleted. A base is never mounted in a stage's container and never written again once
made: stages and runs that use it at the same time each see it as it was, plus their own layer.
The stages' volumes carry the run's labels (the run's cleanup, and the sweep of lost runs, remove
them). A run holds the bases it uses (a small volume of the run's, labelled like a view, made
before it looks at the base again): a base is removed by the sweep once a newer complete one of
the same folder has existed for :data:`DROP_GRACE` seconds and no run holds it and no stage's
view stacks it, or when it was never completed by a process now gone; ``pipekit cleanup --all``
removes every base nothing holds. An engine on which an overlay volume does not mount (a
kernel without overlayfs, a rootless engine) gets the whole workspace copied, as before.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipekit._backends.docker.engine import (
    CONFLICT,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN,
    WORKDIR,
    container_name,
    owner_alive,
    owner_label,
    remove_container,
    stage_labels,
)
from pipekit._workspace.archive import PRIVATE_DIRS, TreeStream, feed
from pipekit._workspace.delta import WorkspaceBase, changed_since, hidden_names, key_size, shipped
from pipekit._workspace.erofs import IMAGE_NAME, TOP, ErofsImage
from pipekit._workspace.keptbase import base_key, base_path_label, load_record, save_record
from pipekit.backend import StageSpec

if TYPE_CHECKING:
    import docker

__all__ = ["CHANGES_DIR", "LABEL_BASE", "LABEL_BASE_OK", "LABEL_BASE_PATH", "LABEL_LOWER", "Layers"]

#: where a stage's container sees its own layer (read-only)
CHANGES_DIR = "/.pipekit-changes"
#: a new base is made when the workspace differs from the current one by more than this
REBASE_BYTES = 32 << 20
REBASE_FILES = 2000
#: a base replaced by a newer one is removed only once that one has been complete this long (a
#: run that chose the base just before has held it by then)
DROP_GRACE = 60.0
#: the overlay's options beyond its folders: a renamed folder and a changed mode are copied up
#: whole (no redirect or metadata-only copy that a bring-back of the layer alone would miss)
OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off"
#: a base volume's label: which folder's bases it is one of (:func:`pipekit._workspace.keptbase.base_key`)
LABEL_BASE = "io.pipekit.workspace-base"
#: where that folder is (HOST:PATH), for people and tests
LABEL_BASE_PATH = "io.pipekit.workspace-base.path"
#: on the companion volume that says a base is complete: the base's name
LABEL_BASE_OK = "io.pipekit.workspace-base.ok"
#: on a stage's volumes: the base its view stacks (a base in use is never removed)
LABEL_LOWER = "io.pipekit.workspace-base.lower"
#: on the volume that mounts a base's image (``NAME-fs``), and on the run's holder of that mount: the base
LABEL_BASE_FS = "io.pipekit.workspace-base.fs"
#: on a base that is an EROFS image (without its ``NAME-fs`` it is gone, never an unpacked base)
LABEL_BASE_IMAGE = "io.pipekit.workspace-base.image"
#: the first kernel that mounts an EROFS image file without a loop device
EROFS_KERNEL = (6, 12)
#: the mount options of a base's image
EROFS_OPTIONS = "ro"


class Layers:
    """The run's base copies and the stages' layers in one engine (``client()``)."""

    def __init__(self, client: Callable[[], docker.DockerClient]) -> None:
        self._client = client
        #: False once an overlay volume failed to mount in this engine: whole copies from then on
        self.works = True
        self._bases: dict[str, WorkspaceBase] = {}  # run id -> its newest base
        self.rebase_at = (REBASE_FILES, REBASE_BYTES)
        self.drop_grace = DROP_GRACE
        #: whether bases are EROFS images here (None: not known yet: the engine's kernel decides,
        #: then whether the first image mounts)
        self.packed: bool | None = None
        self._lowers: dict[str, str] = {}  # base name -> the folder an overlay stacks
        self._holders: dict[tuple[str, str], str] = {}  # (run id, base) -> the holder's container
        self._lock_holders = threading.Lock()
        self._lock = threading.Lock()

    @property
    def api(self) -> Any:
        return self._client().api

    def base_for(self, spec: StageSpec) -> WorkspaceBase:
        """The run's base: the one it uses already, or one an earlier run left, or one made now
        (also when the workspace differs from the one it has by too much)."""
        with self._lock:
            base = self._bases.get(spec.run_id) or self._kept_base(spec)
            if base is not None:
                names, size = base.behind  # as the last stage to start found it
                if names <= self.rebase_at[0] and size <= self.rebase_at[1]:
                    self._bases[spec.run_id] = base
                    return base
            base = self._make_base(spec)
            self._bases[spec.run_id] = base
            return base

    def _packs(self) -> bool:
        """Whether bases are images here: a kernel that mounts image files, and an engine that
        maps no user ids (user namespaces, rootless: the image's owners are this machine's, the
        engine's untar would map them)."""
        if self.packed is None:
            kernel = str(self.api.version().get("KernelVersion", ""))
            numbers = [int(p) for p in kernel.replace("-", ".").split(".")[:2] if p.isdigit()]
            options = " ".join(str(o) for o in self.api.info().get("SecurityOptions") or [])
            mapped = "name=userns" in options or "name=rootless" in options
            self.packed = len(numbers) == 2 and tuple(numbers) >= EROFS_KERNEL and not mapped
        return self.packed

    def _kept_base(self, spec: StageSpec) -> WorkspaceBase | None:
        """The newest complete base an earlier run of this folder left in the engine, as this
        machine's record of it says (how far the folder moved from it in ``behind``)."""
        key = base_key(spec.workspace, spec.hidden)
        listing = (self.api.volumes(filters={"label": f"{LABEL_BASE}={key}"}) or {}).get("Volumes") or []
        complete = {(v.get("Labels") or {}).get(LABEL_BASE_OK) for v in listing}
        for volume in sorted(listing, key=lambda v: str(v.get("CreatedAt", "")), reverse=True):
            name = str(volume["Name"])
            if name not in complete:
                continue
            base = load_record(spec.workspace, name, str(volume.get("CreatedAt", "")))
            if base is None:
                continue
            if not self._hold(spec, name, complete=True):
                continue  # a sweep removed it after the listing
            if not self._mount(spec, name, LABEL_BASE_IMAGE in (volume.get("Labels") or {})):
                continue  # gone meanwhile, or an image this engine cannot mount (the next base is unpacked)
            now = shipped(spec.workspace, spec.hidden)
            changed, gone = changed_since(base.stats, now)
            size = sum(key_size(now[n]) for n in changed)
            base.behind = (len(changed) + len(gone), size)
            base.kept = True
            return base
        return None

    def _make_base(self, spec: StageSpec) -> WorkspaceBase:
        assert spec.image is not None
        key = base_key(spec.workspace, spec.hidden)
        name = f"pipekit-base-{key[:12]}-{os.urandom(4).hex()}"
        labels = {LABEL_MANAGED: "true", LABEL_BASE: key, LABEL_BASE_PATH: base_path_label(spec.workspace)}
        packed = self._packs()
        image_label = {LABEL_BASE_IMAGE: "true"} if packed else {}
        self.api.create_volume(name, labels={**labels, **image_label, **owner_label()})
        binds = {name: {"bind": "/base", "mode": "rw"}}
        start = time.monotonic()
        try:
            helper = self.api.create_container(
                spec.image,
                entrypoint=["sh"],
                labels=stage_labels(spec),
                host_config=self.api.create_host_config(binds=binds),
            )["Id"]
            try:
                exclude = {*PRIVATE_DIRS, *hidden_names(spec.workspace, spec.hidden)}
                stream: TreeStream | ErofsImage
                if packed:
                    stream = ErofsImage(spec.workspace, exclude=exclude, hidden=spec.hidden)
                    self.api.put_archive(helper, "/base", feed(stream.tar()))
                else:
                    stream = TreeStream(spec.workspace, exclude=exclude, hidden=spec.hidden)
                    self.api.put_archive(helper, "/base", feed(stream))
            finally:
                self.api.remove_container(helper, force=True)
            if packed:
                device = f"{self.api.inspect_volume(name)['Mountpoint']}/{IMAGE_NAME}"
                self.api.create_volume(
                    f"{name}-fs",
                    driver="local",
                    driver_opts={"type": "erofs", "device": device, "o": EROFS_OPTIONS},
                    labels={LABEL_MANAGED: "true", LABEL_BASE_FS: name},
                )
            base = WorkspaceBase(name, stream.stats, stream.manifest, stream.size, time.monotonic() - start)
            # (the engine's CreatedAt of a local volume is its folder's mtime: known once the stream is in)
            save_record(spec.workspace, base, str(self.api.inspect_volume(name).get("CreatedAt", "")))
            self._hold(spec, name)
            if not self._mount(spec, name, packed):  # this engine's kernel does not mount the image: unpacked
                self._remove_base(name)
                return self._make_base(spec)
            self.api.create_volume(f"{name}-ok", labels={**labels, LABEL_BASE_OK: name})  # complete from now on
        except BaseException:
            self._remove_base(name)  # (a kill -9 leaves it incomplete: the sweep removes it)
            raise
        return base

    def _mount(self, spec: StageSpec, base: str, image: bool) -> bool:
        """Know where the overlays of ``base`` stack; for an ``image``, start the run's holder of
        its mount (once per run). False: the base is gone (an image without its ``NAME-fs``), or
        the image does not mount on this engine (then no more images: :attr:`packed`)."""
        from docker.errors import APIError, NotFound

        if not image:
            self._lowers[base] = self.api.inspect_volume(base)["Mountpoint"]
            return True
        try:
            fs = self.api.inspect_volume(f"{base}-fs")["Mountpoint"]
        except NotFound:
            return False  # removed (the sweep, `cleanup --all`) after it was listed
        if (spec.run_id, base) in self._holders:
            return True
        assert spec.image is not None
        holder = self.api.create_container(
            spec.image,
            entrypoint=["sh"],
            stdin_open=True,  # (it waits on its input, which never comes)
            network_disabled=True,
            labels={LABEL_MANAGED: "true", LABEL_RUN: spec.run_id, LABEL_BASE_FS: base, **owner_label()},
            host_config=self.api.create_host_config(
                binds={f"{base}-fs": {"bind": "/base", "mode": "ro"}},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=16,
            ),
        )["Id"]
        try:
            self.api.start(holder)
            labels = self.api.inspect_volume(f"{base}-fs").get("Labels") or {}
        except APIError as e:
            remove_container(self.api, holder)
            if "mount" not in str(e).lower():
                raise
            self.packed = False
            return False
        if labels.get(LABEL_BASE_FS) != base:  # removed after the inspect, and made again empty by the engine
            remove_container(self.api, holder)
            self.remove([f"{base}-fs"])
            return False
        with self._lock_holders:
            self._holders[(spec.run_id, base)] = holder
        self._lowers[base] = f"{fs}/{TOP}"
        return True

    def _remove_base(self, name: str) -> None:
        """Remove a base: its companion, the volume that mounts its image, then the base (never
        while that mount is in use)."""
        from docker.errors import NotFound

        self.remove([f"{name}-ok", f"{name}-fs"])
        try:
            self.api.inspect_volume(f"{name}-fs")
        except NotFound:
            self.remove([name])

    def _hold(self, spec: StageSpec, base: str, complete: bool = False) -> bool:
        """Hold ``base`` for the run (its cleanup, or the sweep of a lost run, lets it go);
        whether the base is still there (``complete``: and still complete)."""
        from docker.errors import NotFound

        hold = f"pipekit-{spec.run_id}-hold-{base[-8:]}"
        self.api.create_volume(hold, labels={**stage_labels(spec), LABEL_LOWER: base})
        try:
            self.api.inspect_volume(f"{base}-ok" if complete else base)
        except NotFound:
            self.remove([hold])
            return False
        return True

    def stage_volumes(self, spec: StageSpec, base: WorkspaceBase) -> tuple[list[str], dict[str, dict[str, str]]]:
        """A stage's layer over ``base``: its volumes (the overlay first) and its container's binds."""
        prefix = container_name(spec.run_id, spec.stage)
        labels = {**stage_labels(spec), LABEL_LOWER: base.name}
        made: list[str] = []
        try:
            folders = {}
            for part in ("upper", "work"):
                made.append(f"{prefix}-{part}")
                folders[part] = self.api.create_volume(made[-1], labels=labels)["Mountpoint"]
            lower = self._lowers.get(base.name) or self.api.inspect_volume(base.name)["Mountpoint"]
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
        """Remove every volume of the run (its containers are gone; a kept one's view stays). The
        bases stay for the next runs."""
        self._bases.pop(run_id, None)
        with self._lock_holders:
            holders = [self._holders.pop(k) for k in [k for k in self._holders if k[0] == run_id]]
        for holder in holders:
            remove_container(self.api, holder)
        self.remove(sorted(self._volumes(run_id), key=lambda n: not n.endswith("-view")))  # a view first

    def drop_bases(self, *, superseded: bool = True, quiet: bool = False, folder: str | None = None) -> list[str]:
        """Remove the bases no stage's view stacks: those a newer complete base of the same folder
        replaced (``superseded``; every one otherwise), and those never completed by a process
        now gone. Their names. ``quiet``: an engine error stops it silently (the next sweep goes on).
        ``folder`` (``HOST:PATH``, :func:`~pipekit._workspace.keptbase.base_path_label`): only its bases."""
        from docker.errors import DockerException

        try:
            return self._drop_bases(superseded, folder)
        except (DockerException, OSError):
            if quiet:
                return []
            raise

    def _drop_bases(self, superseded: bool, folder: str | None) -> list[str]:
        # (the volumes that mount images first: the base of each was made before it, so is listed below)
        fs = (self.api.volumes(filters={"label": LABEL_BASE_FS}) or {}).get("Volumes") or []
        listing = (self.api.volumes(filters={"label": LABEL_BASE}) or {}).get("Volumes") or []
        companions = {
            str((v.get("Labels") or {})[LABEL_BASE_OK]): str(v["Name"])
            for v in listing
            if LABEL_BASE_OK in (v.get("Labels") or {})
        }
        bases = [v for v in listing if LABEL_BASE_OK not in (v.get("Labels") or {})]  # (NAME-fs has no LABEL_BASE)
        views = (self.api.volumes(filters={"label": LABEL_LOWER}) or {}).get("Volumes") or []
        used = {(v.get("Labels") or {}).get(LABEL_LOWER) for v in views}
        newest: dict[str, str] = {}
        for v in sorted(bases, key=lambda v: str(v.get("CreatedAt", ""))):
            if v["Name"] in companions:
                newest[(v.get("Labels") or {})[LABEL_BASE]] = v["Name"]
        complete_at = {
            str(v["Labels"][LABEL_BASE_OK]): _seconds(v.get("CreatedAt"))
            for v in listing
            if v["Name"] in companions.values()
        }
        now = _seconds(self.api.info().get("SystemTime")) if superseded else None  # (the engine's clock)
        dropped = []
        for v in bases:
            name, labels = str(v["Name"]), v.get("Labels") or {}
            if folder is not None and labels.get(LABEL_BASE_PATH) != folder:
                continue
            if name in used or (name not in companions and owner_alive(labels.get(LABEL_OWNER))):
                continue  # held by a run, in use by a stage, or being made
            if name in companions and superseded:
                successor = newest.get(labels[LABEL_BASE])
                if successor == name:
                    continue
                since = complete_at.get(successor or "")
                if now is None or since is None or now - since < self.drop_grace:
                    continue  # replaced just now: a run may have chosen it a moment ago
            self._remove_base(name)
            dropped.append(name)
        names = {str(v["Name"]) for v in listing}
        self.remove([str(v["Name"]) for v in fs if (v.get("Labels") or {}).get(LABEL_BASE_FS) not in names])
        return dropped

    def _volumes(self, run_id: str) -> list[str]:
        listing = self.api.volumes(filters={"label": f"{LABEL_RUN}={run_id}"}) or {}
        return [str(v["Name"]) for v in listing.get("Volumes") or []]


def _seconds(timestamp: object) -> float | None:
    """An engine's RFC 3339 time (``2026-12-04T02:53:39.206296033Z``) in seconds; None when unreadable."""
    import datetime
    import re

    text = re.sub(r"(\.\d{6})\d+", r"\1", str(timestamp or "")).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
