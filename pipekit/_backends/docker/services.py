"""The Docker backend's sidecars: a stage's ``services=`` as containers on a network of their own,
reachable by name, started (and healthy) before the stage's own container."""

from __future__ import annotations

import shlex
import time
import uuid
from typing import TYPE_CHECKING, Any

from pipekit._backends.docker.engine import LABEL_SERVICE, container_name
from pipekit._core.util import slug
from pipekit.backend import ServiceSpec, StageSpec
from pipekit.exceptions import StageFailed

if TYPE_CHECKING:
    import docker

__all__ = ["DockerServices"]


class DockerServices:
    """A mixin of :class:`pipekit._backends.docker.backend.DockerBackend` (it needs ``client``, ``ensure_image``
    and ``_labels``)."""

    @property
    def client(self) -> docker.DockerClient:
        raise NotImplementedError

    def ensure_image(self, image: str) -> None:
        raise NotImplementedError

    def _labels(self, spec: StageSpec) -> dict[str, str]:
        raise NotImplementedError

    def _start_services(self, spec: StageSpec, prepared: Any) -> str:
        api = self.client.api
        network = f"pipekit-{spec.run_id}-{slug(spec.stage)[:30]}-{uuid.uuid4().hex[:6]}"
        prepared.network = api.create_network(network, driver="bridge", labels=self._labels(spec))["Id"]
        for svc in spec.services:
            prepared.services.append(self._start_service(spec, svc, network))
        for svc, cid in zip(spec.services, prepared.services, strict=True):
            self._wait_healthy(spec, svc, cid)
        return network

    def _start_service(self, spec: StageSpec, svc: ServiceSpec, network: str) -> str:
        api = self.client.api
        self.ensure_image(svc.image)
        command = shlex.split(svc.command) if isinstance(svc.command, str) else svc.command
        cid: str = api.create_container(
            svc.image,
            command=list(command) if command else None,
            environment=dict(svc.env),
            labels={**self._labels(spec), LABEL_SERVICE: svc.name},
            name=container_name(spec.run_id, f"{spec.stage}-{svc.name}"),
            host_config=api.create_host_config(network_mode=network),
            networking_config=api.create_networking_config({network: api.create_endpoint_config(aliases=[svc.name])}),
        )["Id"]
        api.start(cid)
        return cid

    def _wait_healthy(self, spec: StageSpec, svc: ServiceSpec, cid: str) -> None:
        """Wait until the service's healthcheck passes (or, without one, until it runs)."""
        api = self.client.api
        deadline = time.monotonic() + svc.healthcheck_timeout
        check = ["sh", "-c", svc.healthcheck] if isinstance(svc.healthcheck, str) else svc.healthcheck
        while True:
            state = api.inspect_container(cid)["State"]
            if not state.get("Running"):
                raise self._service_failed(spec, svc, cid, f"exited with code {state.get('ExitCode')}")
            if check is None:
                health = (state.get("Health") or {}).get("Status")
                if health in (None, "healthy"):
                    return
            else:
                exec_id = api.exec_create(cid, list(check))["Id"]
                api.exec_start(exec_id)
                if api.exec_inspect(exec_id).get("ExitCode") == 0:
                    return
            if time.monotonic() > deadline:
                raise self._service_failed(
                    spec, svc, cid, f"did not become healthy within {svc.healthcheck_timeout:g}s"
                )
            time.sleep(0.25)

    def _service_failed(self, spec: StageSpec, svc: ServiceSpec, cid: str, what: str) -> StageFailed:
        try:
            logs = self.client.api.logs(cid, tail=30).decode("utf-8", "replace").rstrip()
        except Exception:
            logs = "(no logs)"
        body = "\n".join(f"  {line}" for line in logs.splitlines()) or "  (no output)"
        return StageFailed(
            f"Service '{svc.name}' ({svc.image}) of stage '{spec.stage}' {what}. Its last log lines:\n{body}",
            stage=spec.stage,
        )
