"""The Docker backend: each stage with an image gets one container for its whole life.

This is the only module that imports the docker SDK, and it does so lazily so that
``import pipekit`` stays cheap.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from pipekit._buildkit import BuildProgress, buildkit_build
from pipekit._host import HostShell
from pipekit._registry import registry_error as _registry_error
from pipekit._registry import registry_of as _registry
from pipekit.backend import (
    BuildSpec,
    CommandResult,
    Image,
    LineSink,
    LineSplitter,
    ServiceSpec,
    StageHandle,
    StageSpec,
)
from pipekit.exceptions import (
    BackendError,
    EngineUnavailable,
    ImageNotFound,
    RegistryError,
    StageFailed,
)

if TYPE_CHECKING:
    import docker

__all__ = ["DockerBackend", "LABEL_RUN", "LABEL_STAGE"]

LABEL_MANAGED = "io.pipekit.managed"
LABEL_RUN = "io.pipekit.run"
LABEL_STAGE = "io.pipekit.stage"
LABEL_SERVICE = "io.pipekit.service"
LABEL_CACHE = "io.pipekit.cache"
WORKDIR = "/workspace"

ENGINE_HINT = (
    "Start a Docker engine (`sudo systemctl start docker`, or `dockerd &` where there is no"
    " systemd; `scripts/start-engine.sh` does it on Debian) or point DOCKER_HOST at a running one"
)


@attrs.define
class _Prepared:
    """What prepare made for a stage: its container, its services' containers, their network."""

    container: str = ""
    services: list[str] = attrs.field(factory=list)
    network: str | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.") or "stage"


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

    def image_id(self, image: str) -> str:
        self.ensure_image(image)
        return str(self.client.images.get(image).id)

    def copy_out(self, handle: StageHandle, path: str) -> list[tuple[str, bytes]]:
        import io
        import tarfile

        from docker.errors import NotFound

        prepared = handle.ref
        if not isinstance(prepared, _Prepared):
            raise StageFailed(
                f"Stage '{handle.spec.stage}' runs on the host: archive host paths directly", stage=handle.spec.stage
            )
        try:
            stream, _stat = self.client.api.get_archive(prepared.container, path)
        except NotFound:
            return []
        data = b"".join(stream)
        files = []
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:
                        # members are named from the base's own name: "dist/app.whl", or "build.log" for a file
                        name = member.name.split("/", 1)[1] if "/" in member.name else ""
                        files.append((name, f.read()))
        return files

    # -- the stage life cycle --------------------------------------------------------------
    def prepare(self, spec: StageSpec) -> StageHandle:
        if spec.image is None:
            if spec.services:
                raise StageFailed(
                    f"Stage '{spec.stage}' has services but no image: services are reached by name from"
                    " the stage's container, so give the stage an image",
                    stage=spec.stage,
                )
            return StageHandle(spec=spec, ref=f"{spec.run_id}/{spec.stage}/{uuid.uuid4().hex[:8]}", where="host")
        from docker.errors import APIError

        self.ensure_image(spec.image)
        labels = self._labels(spec)
        for volume in spec.volumes:
            self._ensure_cache_volume(volume, spec)
        api = self.client.api
        prepared = _Prepared()
        handle = StageHandle(spec=spec, ref=prepared, where="")
        try:
            network = None
            if spec.services:
                network = f"pipekit-{spec.run_id}-{_slug(spec.stage)[:30]}-{uuid.uuid4().hex[:6]}"
                prepared.network = api.create_network(network, driver="bridge", labels=labels)["Id"]
                for svc in spec.services:
                    prepared.services.append(self._start_service(spec, svc, network, labels))
                for svc, cid in zip(spec.services, prepared.services, strict=True):
                    self._wait_healthy(spec, svc, cid)
            container = api.create_container(
                spec.image,
                entrypoint=["sh"],
                stdin_open=True,
                environment=dict(spec.env),
                working_dir=WORKDIR,
                labels=labels,
                name=_container_name(spec.run_id, spec.stage),
                host_config=api.create_host_config(
                    binds={
                        str(spec.workspace): {"bind": WORKDIR, "mode": "rw"},
                        **{volume: {"bind": path, "mode": "rw"} for volume, path in spec.volumes.items()},
                    },
                    network_mode=network,
                ),
            )
            prepared.container = container["Id"]
            api.start(prepared.container)
        except APIError as e:
            self.release(handle)
            reason = _reason(e)
            if "executable file not found" in reason or "no such file" in reason.lower():
                raise StageFailed(
                    f"Image '{spec.image}' has no shell `sh`, which pipekit needs to run stage"
                    f" '{spec.stage}' commands in it. Use an image with a shell ({reason})",
                    stage=spec.stage,
                ) from e
            raise BackendError(f"Cannot start the container of stage '{spec.stage}' ({spec.image}): {reason}") from e
        except BaseException:
            self.release(handle)
            raise
        return StageHandle(spec=spec, ref=prepared, where=f"container {prepared.container[:12]}")

    def _ensure_cache_volume(self, name: str, spec: StageSpec) -> None:
        """Cache volumes outlive runs on purpose; they carry the cache label, not the run's."""
        from docker.errors import NotFound

        try:
            self.client.api.inspect_volume(name)
        except NotFound:
            self.client.api.create_volume(name, labels={LABEL_CACHE: "true", LABEL_STAGE: spec.stage})

    def cache_volumes(self) -> list[dict[str, Any]]:
        """The cache volumes in the engine: name, stage, created."""
        listing = self.client.api.volumes(filters={"label": LABEL_CACHE}) or {}
        return [
            {
                "name": v["Name"],
                "stage": (v.get("Labels") or {}).get(LABEL_STAGE, "?"),
                "created": v.get("CreatedAt", ""),
            }
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

    def _labels(self, spec: StageSpec) -> dict[str, str]:
        return {**spec.labels, LABEL_MANAGED: "true", LABEL_RUN: spec.run_id, LABEL_STAGE: spec.stage}

    def _start_service(self, spec: StageSpec, svc: ServiceSpec, network: str, labels: Mapping[str, str]) -> str:
        api = self.client.api
        self.ensure_image(svc.image)
        command = shlex.split(svc.command) if isinstance(svc.command, str) else svc.command
        cid: str = api.create_container(
            svc.image,
            command=list(command) if command else None,
            environment=dict(svc.env),
            labels={**labels, LABEL_SERVICE: svc.name},
            name=_container_name(spec.run_id, f"{spec.stage}-{svc.name}"),
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

    def exec(self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink) -> CommandResult:
        spec = handle.spec
        if not isinstance(handle.ref, _Prepared):
            return self._host.run(
                str(handle.ref),
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
                handle.ref.container, ["sh", "-c", command], environment=dict(env) or None, workdir=WORKDIR
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
        prepared = handle.ref
        if not isinstance(prepared, _Prepared):
            self._host.kill(str(prepared))
            return
        for cid in [prepared.container, *prepared.services]:
            if cid:
                self._remove(cid)
        if prepared.network:
            self._remove_network(prepared.network)

    def cleanup(self, run_id: str) -> None:
        from docker.errors import DockerException

        label = {"label": f"{LABEL_RUN}={run_id}"}
        try:
            for c in self.client.api.containers(all=True, filters=label):
                self._remove(c["Id"])
            for n in self.client.api.networks(filters=label):
                self._remove_network(n["Id"])
        except DockerException:
            return

    def _remove_network(self, network_id: str) -> None:
        from docker.errors import APIError, NotFound

        try:
            self.client.api.remove_network(network_id)
        except NotFound:
            pass
        except APIError as e:
            if e.status_code != 409:
                raise

    # -- images and registries -------------------------------------------------------------
    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        if spec.secrets:
            image_id = buildkit_build(spec, on_line)
        else:
            image_id = self._build_classic(spec, on_line)
        return Image(id=image_id, tags=(spec.tag,) if spec.tag else ())

    def _build_classic(self, spec: BuildSpec, on_line: LineSink) -> str:
        from docker.errors import APIError, DockerException

        progress = BuildProgress(on_line, _STEP)
        image_id = None
        splitter = LineSplitter("stdout", progress)
        try:
            for chunk in self.client.api.build(
                path=str(spec.context),
                dockerfile=spec.dockerfile,
                tag=spec.tag,
                buildargs=dict(spec.build_args) or None,
                target=spec.target,
                labels=dict(spec.labels) or None,
                rm=True,
                forcerm=True,
                decode=True,
            ):
                if "stream" in chunk:
                    splitter.feed(chunk["stream"].encode())
                if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                if "error" in chunk:
                    splitter.close()
                    raise progress.failed(spec.stage, chunk["error"].strip())
            splitter.close()
        except (APIError, DockerException) as e:
            raise progress.failed(spec.stage, _reason(e)) from e
        if image_id is None and spec.tag:
            image_id = self.client.images.get(spec.tag).id
        if image_id is None:
            raise progress.failed(spec.stage, "the engine returned no image id")
        return str(image_id)

    def tag(self, image: Image, ref: str) -> Image:
        from docker.errors import APIError
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(ref)
        try:
            self.client.api.tag(image.id, repo, tag or "latest")
        except APIError as e:
            raise _registry_error(_reason(e), ref, "tag") from e
        full = ref if tag else f"{ref}:latest"
        return Image(id=image.id, tags=(full, *(t for t in image.tags if t != full)))

    def push(self, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> str:
        from docker.errors import APIError, DockerException
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(ref)
        digest = None
        try:
            for chunk in self.client.api.push(
                repo, tag=tag or "latest", stream=True, decode=True, auth_config=dict(auth) if auth else None
            ):
                if "error" in chunk:
                    raise _registry_error(chunk["error"], ref, "push to")
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = aux["Digest"]
                _progress_line(chunk, on_line)
        except (APIError, DockerException) as e:
            raise _registry_error(_reason(e), ref, "push to") from e
        if not digest:
            raise RegistryError(
                f"Pushed {ref} but the registry reported no digest", registry=_registry(ref), reference=ref
            )
        return str(digest)

    def pull(self, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> Image:
        from docker.errors import APIError, DockerException
        from docker.utils import parse_repository_tag

        repo, tag = parse_repository_tag(ref)
        try:
            for chunk in self.client.api.pull(
                repo, tag=tag or "latest", stream=True, decode=True, auth_config=dict(auth) if auth else None
            ):
                if "error" in chunk:
                    raise _registry_error(chunk["error"], ref, "pull from")
                _progress_line(chunk, on_line)
            image = self.client.images.get(ref if tag else f"{ref}:latest")
        except (APIError, DockerException) as e:
            raise _registry_error(_reason(e), ref, "pull from") from e
        with self._lock:
            self._ready_images.add(ref)
        return Image(id=str(image.id), tags=tuple(image.tags))

    def run_once(
        self,
        run_id: str,
        stage: str,
        image: str,
        command: list[str] | None,
        env: Mapping[str, str],
        on_line: LineSink,
    ) -> CommandResult:
        from docker.errors import APIError
        from docker.utils.socket import STDERR, frames_iter

        self.ensure_image(image)
        api = self.client.api
        start = time.monotonic()
        shown = " ".join(command) if command else "(the image's command)"
        try:
            cid = api.create_container(
                image,
                command=command,
                environment=dict(env),
                labels={LABEL_MANAGED: "true", LABEL_RUN: run_id, LABEL_STAGE: stage},
                name=_container_name(run_id, f"{stage}-run"),
            )["Id"]
        except APIError as e:
            raise BackendError(f"Cannot create a container from '{image}' in stage '{stage}': {_reason(e)}") from e
        out, err = LineSplitter("stdout", on_line), LineSplitter("stderr", on_line)
        try:
            sock = api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 1})
            try:
                api.start(cid)
                for stream_id, data in frames_iter(sock, tty=False):
                    (err if stream_id == STDERR else out).feed(data)
            finally:
                _close_stream(sock)
            code = api.wait(cid).get("StatusCode", 137)
        except APIError as e:
            reason = _reason(e)
            if "executable file not found" in reason or "not found" in reason:
                return CommandResult(shown, 127, out.close(), err.close() + reason + "\n", time.monotonic() - start)
            raise BackendError(f"Cannot run '{image}' in stage '{stage}': {reason}") from e
        finally:
            self._remove(cid)
        return CommandResult(shown, int(code), out.close(), err.close(), time.monotonic() - start)

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


_STEP = re.compile(r"^Step \d+/\d+ : (.+)$")


def _progress_line(chunk: Mapping[str, Any], on_line: LineSink) -> None:
    """Log the meaningful status lines of a push or pull, not the progress bars."""
    status = chunk.get("status")
    if not status or chunk.get("progressDetail") or chunk.get("progress"):
        return
    layer = chunk.get("id")
    on_line("stdout", f"{layer}: {status}" if layer else str(status))


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
                sock.connect(host[len("unix://") :])
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
