"""The Docker backend's housekeeping: cache volumes, and what lost runs left behind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipekit._docker_engine import LABEL_CACHE, LABEL_MANAGED, LABEL_OWNER, LABEL_RUN, LABEL_STAGE, owner_alive
from pipekit.backend import CacheVolume, StageSpec

if TYPE_CHECKING:
    import docker

__all__ = ["DockerHousekeeping"]


class DockerHousekeeping:
    """A mixin of :class:`pipekit._docker.DockerBackend` (it needs ``client`` and ``cleanup``)."""

    @property
    def client(self) -> docker.DockerClient:
        raise NotImplementedError

    def cleanup(self, run_id: str) -> None:
        raise NotImplementedError

    def _ensure_cache_volume(self, name: str, spec: StageSpec) -> None:
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
            if e.status_code == 409:
                return False
            raise

    def leftovers(self) -> dict[str, bool]:
        """The runs that have containers or networks in the engine: run id -> whether the pipekit
        process that made them still runs."""
        managed = {"label": LABEL_MANAGED}
        objects = [*self.client.api.containers(all=True, filters=managed), *self.client.api.networks(filters=managed)]
        runs: dict[str, bool] = {}
        for obj in objects:
            labels = obj.get("Labels") or {}
            run_id = labels.get(LABEL_RUN)
            if run_id:
                runs[run_id] = runs.get(run_id, False) or owner_alive(labels.get(LABEL_OWNER))
        return runs

    def sweep(self) -> list[str]:
        """Remove what runs whose process is gone left behind (a kill -9, an engine that was down
        when the run ended); returns their ids. Runs still going are left alone."""
        from docker.errors import DockerException

        try:
            lost = [run_id for run_id, alive in self.leftovers().items() if not alive]
        except DockerException:
            return []
        for run_id in lost:
            self.cleanup(run_id)
        return lost
