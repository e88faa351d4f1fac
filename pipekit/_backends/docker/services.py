"""The Docker backend's sidecars: a stage's ``services=`` as containers on a network of their own,
reachable by name, started (and healthy) before the stage's own container."""

from __future__ import annotations

import shlex
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipekit._backends.docker.engine import LABEL_SERVICE, StageContainer, container_name, stage_labels
from pipekit._core.util import slug
from pipekit.backend import ServiceSpec, StageSpec
from pipekit.exceptions import StageFailed

if TYPE_CHECKING:
    import docker

    from pipekit._backends.docker.images import Images

__all__ = ["Services"]


class Services:
    """A stage's services, over the backend's client (``client()``) and its ``images``."""

    def __init__(
        self, client: Callable[[], docker.DockerClient], images: Images, local: Callable[[], bool] = lambda: True
    ) -> None:
        self._client = client
        self._images = images
        self._local = local  # whether this machine reaches the engine's bridge networks (a local engine)

    def start(self, spec: StageSpec, prepared: StageContainer) -> str:
        """Start the stage's services on a network of their own (noted in ``prepared``) and wait
        until each is healthy; the network's name."""
        api = self._client().api
        network = f"pipekit-{spec.run_id}-{slug(spec.stage)[:30]}-{uuid.uuid4().hex[:6]}"
        prepared.network = api.create_network(network, driver="bridge", labels=stage_labels(spec))["Id"]
        for svc in spec.services:
            prepared.services.append(self._start_one(spec, svc, network))
        for svc, cid in zip(spec.services, prepared.services, strict=True):
            self.wait_healthy(spec, svc, cid)
        return network

    def _start_one(self, spec: StageSpec, svc: ServiceSpec, network: str) -> str:
        api = self._client().api
        self._images.ensure_image(svc.image)
        command = shlex.split(svc.command) if isinstance(svc.command, str) else svc.command
        cid: str = api.create_container(
            svc.image,
            command=list(command) if command else None,
            environment=dict(svc.env),
            labels={**stage_labels(spec), LABEL_SERVICE: svc.name},
            name=container_name(spec.run_id, f"{spec.stage}-{svc.name}"),
            host_config=api.create_host_config(network_mode=network),
            networking_config=api.create_networking_config({network: api.create_endpoint_config(aliases=[svc.name])}),
        )["Id"]
        api.start(cid)
        return cid

    def wait_healthy(self, spec: StageSpec, svc: ServiceSpec, cid: str) -> None:
        """Wait until the service's healthcheck passes (or, without one, until it runs)."""
        api = self._client().api
        deadline = time.monotonic() + svc.healthcheck_timeout
        check = ["sh", "-c", svc.healthcheck] if isinstance(svc.healthcheck, str) else svc.healthcheck
        while True:
            state = api.inspect_container(cid)["State"]
            if not state.get("Running"):
                raise self._service_failed(spec, svc, cid, f"exited with code {state.get('ExitCode')}")
            if check is None:
                health = (state.get("Health") or {}).get("Status")
                if health is None and svc.ports and self._local():
                    if self._ports_open(cid, svc.ports):
                        return
                elif health in (None, "healthy"):
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

    def _ports_open(self, cid: str, ports: tuple[int, ...]) -> bool:
        """Whether each port of the service accepts a connection (from here, at its address)."""
        networks = self._client().api.inspect_container(cid)["NetworkSettings"].get("Networks") or {}
        addresses = [n.get("IPAddress") for n in networks.values() if n.get("IPAddress")]
        if not addresses:
            return False
        for port in ports:
            try:
                socket.create_connection((addresses[0], port), timeout=0.5).close()
            except OSError:
                return False
        return True

    def _service_failed(self, spec: StageSpec, svc: ServiceSpec, cid: str, what: str) -> StageFailed:
        try:
            logs = self._client().api.logs(cid, tail=30).decode("utf-8", "replace").rstrip()
        except Exception:
            logs = "(no logs)"
        body = "\n".join(f"  {line}" for line in logs.splitlines()) or "  (no output)"
        return StageFailed(
            f"Service '{svc.name}' ({svc.image}) of stage '{spec.stage}' {what}. Its last log lines:\n{body}",
            stage=spec.stage,
        )
