"""The Docker backend's housekeeping: cache volumes, and what lost runs left behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pipekit._backends.docker.engine import (
    CONFLICT,
    LABEL_CACHE,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN,
    LABEL_SERVICE,
    LABEL_STAGE,
    StageContainer,
    owner_alive,
    remove_container,
    remove_network,
)
from pipekit.backend import CacheVolume, StageHandle, StageSpec

if TYPE_CHECKING:
    import docker

__all__ = ["KEPT", "Housekeeping", "is_kept", "sweep_lost"]

#: the name suffix of a container kept after its stage failed (``--keep-failed``): the run's own
#: cleanup and the sweep of lost runs leave it; ``pipekit cleanup RUN`` removes it
KEPT = "-kept"


def is_kept(container: dict) -> bool:  # type: ignore[type-arg]
    return any(name.endswith(KEPT) for name in container.get("Names") or ())


def sweep_lost(leftovers: Callable[[], dict[str, bool]], cleanup: Callable[[str], None]) -> list[str]:
    """Remove what runs whose process is gone left behind (a kill -9, an engine that was down
    when the run ended), as ``leftovers`` finds them and ``cleanup`` removes them; their ids.
    Runs still going are left alone."""
    from docker.errors import DockerException

    try:
        lost = [run_id for run_id, alive in leftovers().items() if not alive]
    except DockerException:
        return []
    for run_id in lost:
        cleanup(run_id)
    return lost


class Housekeeping:
    """Cache volumes, what lost runs left, and containers kept after a failure, over the
    backend's client (``client()``)."""

    def __init__(self, client: Callable[[], docker.DockerClient]) -> None:
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        return self._client()

    def ensure_cache_volume(self, name: str, spec: StageSpec) -> None:
        """Cache volumes outlive runs on purpose; they carry the cache label, not the run's."""
        from docker.errors import NotFound

        try:
            self.client.api.inspect_volume(name)
        except NotFound:
            self.client.api.create_volume(name, labels={LABEL_CACHE: "true", LABEL_STAGE: spec.stage})

    def cache_volumes(self) -> list[CacheVolume]:
        """The cache volumes in the engine."""
        listing = self.client.api.volumes(filters={"label": LABEL_CACHE}) or {}
        return [
            CacheVolume(v["Name"], (v.get("Labels") or {}).get(LABEL_STAGE, "?"), v.get("CreatedAt", ""))
            for v in listing.get("Volumes") or []
        ]

    def remove_volume(self, name: str) -> bool:
        from docker.errors import APIError, NotFound

        try:
            self.client.api.remove_volume(name)
            return True
        except NotFound:
            return False
        except APIError as e:
            if e.status_code == CONFLICT:
                return False
            raise

    def leftovers(self) -> dict[str, bool]:
        """The runs that have containers or networks in the engine: run id -> whether the pipekit
        process that made them still runs."""
        managed = {"label": LABEL_MANAGED}
        containers = [c for c in self.client.api.containers(all=True, filters=managed) if not is_kept(c)]
        volumes = (self.client.api.volumes(filters=managed) or {}).get("Volumes") or []
        objects = [*containers, *self.client.api.networks(filters=managed), *volumes]
        runs: dict[str, bool] = {}
        for obj in objects:
            labels = obj.get("Labels") or {}
            run_id = labels.get(LABEL_RUN)
            if run_id:
                runs[run_id] = runs.get(run_id, False) or owner_alive(labels.get(LABEL_OWNER))
        return runs

    # -- containers kept after a failure ---------------------------------------------------
    def keep(self, handle: StageHandle) -> list[str]:
        """Keep a failed stage's container and its services (renamed ``...-kept``); their names."""
        ref = handle.ref
        if not isinstance(ref, StageContainer):
            return []
        if ref.shell is not None:
            ref.shell.close()  # the container's shell stays, waiting, for `pipekit shell`
        ids = [c for c in [ref.container, *ref.services] if c]
        names = []
        for cid in ids:
            name = self.client.api.inspect_container(cid)["Name"].lstrip("/") + KEPT
            self.client.api.rename(cid, name)
            names.append(name)
        return names

    def kept(self) -> dict[str, list[str]]:
        """Runs that hold kept containers: run id -> the stages kept."""
        runs: dict[str, list[str]] = {}
        for c in self.client.api.containers(all=True, filters={"label": LABEL_MANAGED}):
            labels = c.get("Labels") or {}
            if is_kept(c) and LABEL_SERVICE not in labels:
                runs.setdefault(labels.get(LABEL_RUN, "?"), []).append(labels.get(LABEL_STAGE, "?"))
        return runs

    def drop_kept(self, run_id: str) -> int:
        """Remove the kept containers of a run (and the networks they held); how many."""
        from docker.errors import APIError

        found = self.client.api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})
        kept = [c for c in found if is_kept(c)]
        for c in kept:
            remove_container(self.client.api, c["Id"])
        for n in self.client.api.networks(filters={"label": f"{LABEL_RUN}={run_id}"}):
            try:
                remove_network(self.client.api, n["Id"])
            except APIError:
                pass
        return len([c for c in kept if LABEL_SERVICE not in (c.get("Labels") or {})])

    def kept_container(self, run_id: str, stage: str) -> str | None:
        """The id of a stage's kept container, if the run kept it."""
        labels = [f"{LABEL_RUN}={run_id}", f"{LABEL_STAGE}={stage}"]
        for c in self.client.api.containers(all=True, filters={"label": labels}):
            if is_kept(c) and LABEL_SERVICE not in (c.get("Labels") or {}):
                return str(c["Id"])
        return None
