"""Talking to a Docker engine: where it is, reaching it, and turning its errors into ours.

Shared by the Docker backend's modules; imports no docker SDK at module level.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from pipekit._core.util import process_alive, slug
from pipekit.backend import LineSink, StageHandle, StageSpec
from pipekit.exceptions import EngineUnavailable, StageFailed

if TYPE_CHECKING:
    from docker import APIClient

    from pipekit._backends.docker.shell import AttachedShell

__all__ = [
    "LABEL_RUN",
    "LABEL_STAGE",
    "WORKDIR",
    "WORKSPACE_MODES",
    "StageContainer",
    "container_name",
    "container_of",
    "engine_is_local",
    "remove_container",
    "remove_network",
    "stage_container",
    "stage_labels",
]

LABEL_MANAGED = "io.pipekit.managed"
LABEL_RUN = "io.pipekit.run"
LABEL_STAGE = "io.pipekit.stage"
LABEL_SERVICE = "io.pipekit.service"
LABEL_CACHE = "io.pipekit.cache"
LABEL_OWNER = "io.pipekit.owner"  # HOST:PID of the pipekit process: a run whose process is gone left it


def owner_label() -> dict[str, str]:
    return {LABEL_OWNER: f"{socket.gethostname()}:{os.getpid()}"}


def owner_alive(owner: str | None) -> bool:
    """Whether the pipekit process that made a container still runs (unknown hosts count as alive)."""
    if not owner or ":" not in owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return process_alive(int(pid))


WORKDIR = "/workspace"
#: the engine's answer to a removal already in progress, or to a network still in use
CONFLICT = 409
#: how a stage gets the workspace: a bind mount, a copy in and out, or whichever fits the engine
WORKSPACE_MODES = ("auto", "mount", "copy")
WORKSPACE_ENV = "PIPEKIT_WORKSPACE"

ENGINE_HINT = (
    "Start a Docker engine (`sudo systemctl start docker`, or `dockerd &` where there is no"
    " systemd) or point DOCKER_HOST at a running one"
)


def container_name(run_id: str, stage: str) -> str:
    return f"pipekit-{run_id}-{slug(stage)[:40]}-{uuid.uuid4().hex[:6]}"


def engine_is_local(host: str) -> bool:
    """Whether an engine address is on this machine (a unix socket or a named pipe)."""
    return host.startswith(("unix://", "npipe://", "/"))


STEP = re.compile(r"^Step \d+/\d+ : (.+)$")


def progress_line(chunk: Mapping[str, Any], on_line: LineSink) -> None:
    """Log the meaningful status lines of a push or pull, not the progress bars."""
    status = chunk.get("status")
    if not status or chunk.get("progressDetail") or chunk.get("progress"):
        return
    layer = chunk.get("id")
    on_line("stdout", f"{layer}: {status}" if layer else str(status))


def with_tag(image: str) -> str:
    """docker-py pulls every tag of a repository when none is given; the CLI pulls :latest."""
    has_tag = ":" in image.rsplit("/", 1)[-1] or "@" in image
    return image if has_tag else f"{image}:latest"


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def probe_engine(host: str, timeout: float = 5.0) -> None:
    """Connect to the engine's socket ourselves first, for a clear error and no leaked socket."""
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(host[len("unix://") :])
        elif host.startswith(("tcp://", "http://", "https://")):
            hostport = host.split("://", 1)[1].split("/", 1)[0]
            name, _, port = hostport.rpartition(":")
            with socket.create_connection((name or hostport, int(port or 2375)), timeout=timeout):
                pass
    except (OSError, ValueError) as e:
        detail = getattr(e, "strerror", None) or str(e)
        raise EngineUnavailable(f"Cannot reach a Docker engine at {host} ({detail}). {ENGINE_HINT}.") from e


def unreachable(e: BaseException, host: str) -> EngineUnavailable:
    return EngineUnavailable(f"Cannot reach a Docker engine at {host} ({engine_message(e)}). {ENGINE_HINT}.")


def engine_message(e: Any) -> str:
    """What the engine said about a failed call: its explanation when it gave one."""
    explanation = getattr(e, "explanation", None)
    if explanation:
        return str(explanation)
    return str(e)


@attrs.define
class StageContainer:
    """What a stage has in an engine (the ``ref`` of its handle): its container, its services'
    containers, their network, the exec streams open now (closed by a backend that loses the
    engine) and the container's own shell, which runs its commands."""

    container: str = ""
    services: list[str] = attrs.field(factory=list)
    network: str | None = None
    streams: set[Any] = attrs.field(factory=set)
    shell: AttachedShell | None = None


def stage_container(handle: StageHandle) -> StageContainer:
    """What the Docker backend made for the stage (``handle.ref``, typed); StageFailed when the
    handle is not one of a Docker engine's or has no container."""
    prepared = handle.ref
    if not isinstance(prepared, StageContainer) or not prepared.container:
        raise StageFailed(f"Stage '{handle.spec.stage}' has no container", stage=handle.spec.stage)
    return prepared


def container_of(handle: StageHandle) -> str:
    """The id of the stage's container; StageFailed when it has none."""
    return stage_container(handle).container


def stage_labels(spec: StageSpec) -> dict[str, str]:
    """The labels of everything made for a stage: its own, then pipekit's (run, stage, owner)."""
    return {**spec.labels, LABEL_MANAGED: "true", LABEL_RUN: spec.run_id, LABEL_STAGE: spec.stage, **owner_label()}


def remove_container(api: APIClient, container_id: str) -> None:
    """Remove a container and its anonymous volumes; one that is gone, or going, is fine."""
    from docker.errors import APIError, NotFound

    try:
        api.remove_container(container_id, force=True, v=True)
    except NotFound:
        pass
    except APIError as e:
        if e.status_code != CONFLICT:  # its removal is already in progress
            raise


def remove_network(api: APIClient, network_id: str) -> None:
    """Remove a network; one that is gone, or still in use (CONFLICT), is left."""
    from docker.errors import APIError, NotFound

    try:
        api.remove_network(network_id)
    except NotFound:
        pass
    except APIError as e:
        if e.status_code != CONFLICT:
            raise
