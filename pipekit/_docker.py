"""The Docker backend: each stage with an image gets one container for its whole life.

This is the only module that imports the docker SDK, and it does so lazily so that
``import pipekit`` stays cheap.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipekit._host import HostShell
from pipekit.backend import CommandResult, LineSink, LineSplitter, StageHandle, StageSpec
from pipekit.exceptions import BackendError, EngineUnavailable, ImageNotFound, StageFailed

if TYPE_CHECKING:
    import docker

__all__ = ["DockerBackend", "LABEL_RUN", "LABEL_STAGE"]

LABEL_MANAGED = "io.pipekit.managed"
LABEL_RUN = "io.pipekit.run"
LABEL_STAGE = "io.pipekit.stage"
WORKDIR = "/workspace"

ENGINE_HINT = (
    "Start a Docker engine (`sudo systemctl start docker`, or `dockerd &` where there is no"
    " systemd; `scripts/start-engine.sh` does it on Debian) or point DOCKER_HOST at a running one"
)


def _container_name(run_id: str, stage: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]+", "-", stage).strip("-.") or "stage"
    return f"pipekit-{run_id}-{safe[:40]}-{uuid.uuid4().hex[:6]}"


class DockerBackend:
    """Runs stages in containers of one Docker engine (``DOCKER_HOST`` or the local socket)."""

    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client
        self._host = HostShell()
        self._image_locks: dict[str, threading.Lock] = {}
        self._ready_images: set[str] = set()
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            import docker
            from docker.errors import DockerException

            _probe_engine()
            try:
                self._client = docker.from_env()
            except DockerException as e:
                raise _unreachable(e) from e
        return self._client

    def check(self) -> None:
        from docker.errors import DockerException

        try:
            self.client.ping()
        except (DockerException, OSError) as e:  # OSError: requests' ConnectionError and friends
            raise _unreachable(e) from e

    # -- images -----------------------------------------------------------------------------
    def ensure_image(self, image: str) -> None:
        """Make sure ``image`` is in the engine, pulling it once if it is not."""
        from docker.errors import APIError, DockerException
        from docker.errors import ImageNotFound as DockerImageNotFound

        with self._lock:
            if image in self._ready_images:
                return
            lock = self._image_locks.setdefault(image, threading.Lock())
        with lock:
            if image in self._ready_images:
                return
            try:
                self.client.images.get(image)
            except DockerImageNotFound:
                try:
                    self.client.images.pull(_with_tag(image))
                except (APIError, DockerException) as e:
                    raise ImageNotFound(
                        f"Image '{image}' is not in the Docker engine and could not be pulled:"
                        f" {_reason(e)}. Build or pull it first, or map it to a local image with"
                        f" --image-map {image}=LOCAL_IMAGE",
                        image=image,
                    ) from e
            except DockerException as e:
                raise BackendError(f"Cannot look up image '{image}': {_reason(e)}") from e
            with self._lock:
                self._ready_images.add(image)

    # -- the stage life cycle --------------------------------------------------------------
    def prepare(self, spec: StageSpec) -> StageHandle:
        if spec.image is None:
            return StageHandle(spec=spec, ref=None, where="host")
        from docker.errors import APIError

        self.ensure_image(spec.image)
        labels = {
            **spec.labels,
            LABEL_MANAGED: "true",
            LABEL_RUN: spec.run_id,
            LABEL_STAGE: spec.stage,
        }
        api = self.client.api
        try:
            container = api.create_container(
                spec.image,
                entrypoint=["sh"],
                stdin_open=True,
                environment=dict(spec.env),
                working_dir=WORKDIR,
                labels=labels,
                name=_container_name(spec.run_id, spec.stage),
                host_config=api.create_host_config(
                    binds={str(spec.workspace): {"bind": WORKDIR, "mode": "rw"}}
                ),
            )
        except APIError as e:
            raise BackendError(
                f"Cannot create a container for stage '{spec.stage}' from '{spec.image}': {_reason(e)}"
            ) from e
        cid = container["Id"]
        handle = StageHandle(spec=spec, ref=cid, where=f"container {cid[:12]}")
        try:
            api.start(cid)
        except APIError as e:
            self.release(handle)
            reason = _reason(e)
            if "executable file not found" in reason or "no such file" in reason.lower():
                raise StageFailed(
                    f"Image '{spec.image}' has no shell `sh`, which pipekit needs to run stage"
                    f" '{spec.stage}' commands in it. Use an image with a shell ({reason})",
                    stage=spec.stage,
                ) from e
            raise BackendError(
                f"Cannot start the container of stage '{spec.stage}' ({spec.image}): {reason}"
            ) from e
        return handle

    def exec(
        self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink
    ) -> CommandResult:
        spec = handle.spec
        if handle.ref is None:
            return self._host.run(
                f"{spec.run_id}/{spec.stage}",
                command,
                cwd=spec.workspace,
                env={**spec.env, **env},
                on_line=on_line,
            )
        from docker.errors import APIError, NotFound
        from docker.utils.socket import STDERR, frames_iter

        api = self.client.api
        start = time.monotonic()
        out = LineSplitter("stdout", on_line)
        err = LineSplitter("stderr", on_line)
        try:
            exec_id = api.exec_create(
                handle.ref, ["sh", "-c", command], environment=dict(env) or None, workdir=WORKDIR
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)
            try:
                for stream_id, data in frames_iter(sock, tty=False):
                    (err if stream_id == STDERR else out).feed(data)
            finally:
                _close_stream(sock)
            stdout, stderr = out.close(), err.close()
            code = api.exec_inspect(exec_id).get("ExitCode")
        except NotFound as e:
            raise StageFailed(
                f"The container of stage '{spec.stage}' is gone (removed while `{command}` ran)",
                stage=spec.stage,
            ) from e
        except APIError as e:
            raise BackendError(f"Cannot run a command in stage '{spec.stage}': {_reason(e)}") from e
        except Exception as e:  # the stream broke: the container was removed under us
            raise StageFailed(
                f"Lost the container of stage '{spec.stage}' while `{command}` ran: {e}",
                stage=spec.stage,
            ) from e
        if code is None:  # the container went away before the command finished
            code = 137
        return CommandResult(command, int(code), stdout, stderr, time.monotonic() - start)

    def release(self, handle: StageHandle) -> None:
        spec = handle.spec
        if handle.ref is None:
            self._host.kill(f"{spec.run_id}/{spec.stage}")
            return
        self._remove(handle.ref)

    def cleanup(self, run_id: str) -> None:
        from docker.errors import DockerException

        try:
            leftovers = self.client.api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})
        except DockerException:
            return
        for c in leftovers:
            self._remove(c["Id"])

    def _remove(self, container_id: str) -> None:
        from docker.errors import APIError, NotFound

        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except NotFound:
            pass
        except APIError as e:
            if e.status_code == 409:  # removal already in progress
                return
            raise


def _with_tag(image: str) -> str:
    """docker-py pulls every tag of a repository when none is given; the CLI pulls :latest."""
    has_tag = ":" in image.rsplit("/", 1)[-1] or "@" in image
    return image if has_tag else f"{image}:latest"


def _close_stream(sock: Any) -> None:
    """Close an exec stream's socket completely (docker-py leaves it to the garbage collector)."""
    response = getattr(sock, "_response", None)
    raw = getattr(sock, "_sock", None)
    try:
        if response is not None:
            response.close()
    except (OSError, ValueError):
        pass
    sock.close()
    if raw is not None:
        raw.close()


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _probe_engine(timeout: float = 5.0) -> None:
    """Connect to the engine's socket ourselves first, for a clear error and no leaked socket."""
    host = _docker_host()
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(host[len("unix://"):])
        elif host.startswith(("tcp://", "http://", "https://")):
            hostport = host.split("://", 1)[1].split("/", 1)[0]
            name, _, port = hostport.rpartition(":")
            with socket.create_connection((name or hostport, int(port or 2375)), timeout=timeout):
                pass
    except (OSError, ValueError) as e:
        detail = getattr(e, "strerror", None) or str(e)
        raise EngineUnavailable(f"Cannot reach a Docker engine at {host} ({detail}). {ENGINE_HINT}.") from e


def _unreachable(e: BaseException) -> EngineUnavailable:
    return EngineUnavailable(f"Cannot reach a Docker engine at {_docker_host()} ({_reason(e)}). {ENGINE_HINT}.")


def _reason(e: Any) -> str:
    explanation = getattr(e, "explanation", None)
    if explanation:
        return str(explanation)
    return str(e)
