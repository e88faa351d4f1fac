"""The Docker backend's background containers (``ctx.docker.run(..., detach=True)``): on the
stage's network, under their name, labelled with the run (so that a run's cleanup removes them
too, after a Ctrl-C), removed when the stage ends."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipekit._backends.docker.engine import (
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_SERVICE,
    LABEL_STAGE,
    StageContainer,
    container_name,
    engine_message,
    owner_label,
    remove_container,
    remove_network,
)
from pipekit._core.util import slug
from pipekit.backend import DetachedSpec, StageHandle
from pipekit.exceptions import BackendError

if TYPE_CHECKING:
    import docker

    from pipekit._backends.docker.images import Images

__all__ = ["DetachedRuns"]


class DetachedRuns:
    """Background containers, over the backend's client (``client()``) and its ``images``."""

    def __init__(self, client: Callable[[], docker.DockerClient], images: Images) -> None:
        self._client = client
        self._images = images
        self._lock = threading.Lock()
        self._own_networks: dict[str, str] = {}  # container -> the network made for it alone (a host stage)

    def _network(self, spec: DetachedSpec, stage: StageHandle | None) -> tuple[str, bool]:
        """The stage's network (made now, and joined by the stage's container, when it has none);
        whether it was made for this container alone."""
        api = self._client().api
        prepared = stage.ref if stage is not None and isinstance(stage.ref, StageContainer) else None
        if prepared is not None and prepared.network:
            return prepared.network, False
        run_id, name = spec.origin.run_id, spec.origin.stage
        labels = {LABEL_MANAGED: "true", LABEL_RUN: run_id, LABEL_STAGE: name, **owner_label()}
        network: str = api.create_network(
            f"pipekit-{run_id}-{slug(name)[:30]}-{uuid.uuid4().hex[:6]}", driver="bridge", labels=labels
        )["Id"]
        if prepared is None or not prepared.container:
            return network, True
        api.connect_container_to_network(prepared.container, network)
        prepared.network = network  # removed with the stage, after its containers
        return network, False

    def start(self, spec: DetachedSpec, stage: StageHandle | None) -> str:
        from docker.errors import APIError

        api, origin = self._client().api, spec.origin
        self._images.ensure_image(spec.image)
        network, own = self._network(spec, stage)
        labels = {LABEL_MANAGED: "true", LABEL_RUN: origin.run_id, LABEL_STAGE: origin.stage, **owner_label()}
        try:
            cid: str = api.create_container(
                spec.image,
                command=spec.command,
                environment=dict(spec.env),
                labels={**labels, LABEL_SERVICE: spec.name},
                name=container_name(origin.run_id, f"{origin.stage}-{spec.name}"),
                host_config=api.create_host_config(network_mode=network),
                networking_config=api.create_networking_config(
                    {network: api.create_endpoint_config(aliases=[spec.name])}
                ),
            )["Id"]
        except APIError as e:
            if own:
                remove_network(api, network)
            raise BackendError(
                f"Cannot create a container from '{spec.image}' in stage '{origin.stage}': {engine_message(e)}"
            ) from e
        if own:
            with self._lock:
                self._own_networks[cid] = network
        prepared = stage.ref if stage is not None and isinstance(stage.ref, StageContainer) else None
        if prepared is not None:
            prepared.services.append(cid)  # removed with the stage's place too, whatever happens
        try:
            api.start(cid)
        except APIError as e:
            self.remove(cid)
            raise BackendError(f"Cannot start '{spec.image}' in stage '{origin.stage}': {engine_message(e)}") from e
        return cid

    def logs(self, cid: str) -> str:
        data: bytes = self._client().api.logs(cid, stdout=True, stderr=True)
        return data.decode("utf-8", "replace")

    def stop(self, cid: str, timeout: float) -> int | None:
        api = self._client().api
        api.stop(cid, timeout=max(0, int(timeout)))
        code = api.inspect_container(cid)["State"].get("ExitCode")
        return int(code) if code is not None else None

    def wait(self, cid: str, timeout: float | None) -> int:
        from requests.exceptions import ConnectionError, ReadTimeout

        try:
            result = self._client().api.wait(cid, timeout=timeout)
        except (ReadTimeout, ConnectionError) as e:
            if timeout is None:
                raise
            raise TimeoutError(f"the container did not exit within {timeout:g}s") from e
        return int(result.get("StatusCode", 137))

    def remove(self, cid: str) -> None:
        api = self._client().api
        remove_container(api, cid)
        with self._lock:
            network = self._own_networks.pop(cid, None)
        if network is not None:
            remove_network(api, network)
