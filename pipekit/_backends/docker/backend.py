"""The Docker backend: each stage with an image gets one container for its whole life.

This package (with ``_backends/swarm/``) is the only one that imports the docker SDK, and it does
so lazily so that ``import pipekit`` stays cheap. The workspace reaches the container as a bind
mount when the engine is on this machine, or as a copy (``put_files``/``get_files``) when it is
not (``DOCKER_HOST=tcp://...`` or ``ssh://...``): see ``workspace=`` and ``PIPEKIT_WORKSPACE``.
"""

from __future__ import annotations

import os
import posixpath
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from pipekit._backends.docker.detached import DetachedRuns
from pipekit._backends.docker.engine import (
    LABEL_RUN,
    LABEL_STAGE,
    WORKDIR,
    WORKSPACE_ENV,
    WORKSPACE_MODES,
    StageContainer,
    container_name,
    container_of,
    docker_host,
    engine_is_local,
    engine_message,
    probe_engine,
    remove_container,
    remove_network,
    stage_container,
    stage_labels,
    unreachable,
)
from pipekit._backends.docker.files import Files, workspace_covers
from pipekit._backends.docker.housekeeping import Housekeeping, is_kept, sweep_lost
from pipekit._backends.docker.images import Images
from pipekit._backends.docker.layers import CHANGES_DIR, Layers
from pipekit._backends.docker.services import Services
from pipekit._backends.docker.shell import AttachedShell
from pipekit._backends.docker.sockets import close_stream
from pipekit._core.streams import Captured, LineSplitter
from pipekit._core.util import EXIT_KILLED
from pipekit._workspace.keptbase import base_path_label, drop_record
from pipekit.backend import (
    RUN_SCRIPT,
    SCRIPT_VAR,
    BuildSpec,
    CacheVolume,
    Capabilities,
    CommandResult,
    DetachedSpec,
    Image,
    LineSink,
    Origin,
    ServiceSpec,
    StageHandle,
    StageSpec,
    shell_script,
)
from pipekit.exceptions import BackendError, EngineUnavailable, StageFailed, UsageError

if TYPE_CHECKING:
    import docker

__all__ = ["DEFAULT_PIDS_LIMIT", "DockerBackend", "LABEL_RUN", "LABEL_STAGE", "StageContainer", "stage_workdir"]


def stage_workdir(spec: StageSpec) -> str | None:
    """Where a stage's commands start in its container: ``workdir`` (relative to the workspace),
    the workspace, or (with no workspace) the image's own working directory."""
    if spec.workdir:
        return posixpath.join(WORKDIR, spec.workdir)  # an absolute workdir stays as it is
    return WORKDIR if spec.with_workspace else None


DEFAULT_PIDS_LIMIT = 4096  # processes per stage container: a fork bomb stops there


class DockerBackend:
    """Runs stages in containers of one Docker engine (``DOCKER_HOST`` or the local socket).

    ``workspace``: ``"mount"`` binds the pipeline's folder into each container, ``"copy"``
    copies it in and the changes back, ``"auto"`` (the default, or ``PIPEKIT_WORKSPACE``) mounts
    for an engine on this machine and copies for a remote one.

    The stage life cycle is here; ``images`` (:class:`Images`), ``services`` (:class:`Services`),
    ``housekeeping`` (:class:`Housekeeping`) and ``files`` (:class:`Files`) share its one client,
    and the protocol's methods of theirs are delegated to them.
    """

    name = "docker"

    def __init__(
        self, client: docker.DockerClient | None = None, *, workspace: str | None = None, host: str | None = None
    ) -> None:
        mode = workspace or os.environ.get(WORKSPACE_ENV) or "auto"
        if mode not in WORKSPACE_MODES:
            raise UsageError(f"the workspace mode is one of {', '.join(WORKSPACE_MODES)}, got {mode!r}")
        self.workspace_mode = mode
        self._client = client
        self._given_client = client is not None
        self._answered = False
        self._host = host
        self.images = Images(lambda: self.client, lambda: self.host)
        self.services = Services(lambda: self.client, self.images, lambda: engine_is_local(self.host))
        self.detached = DetachedRuns(lambda: self.client, self.images)
        self.housekeeping = Housekeeping(lambda: self.client)
        self.files = Files(lambda: self.client)
        self.layers = Layers(lambda: self.client)

    # -- connection -------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """The engine's address."""
        if self._host is not None:
            return self._host
        if self._given_client and self._client is not None:
            base = str(self._client.api.base_url)
            if base in ("http+docker://localhost", "http+docker://localnpipe"):
                return "unix://"
            return base.replace("http://", "tcp://", 1)
        return docker_host()

    @property
    def shares_workspace(self) -> bool:
        if self.workspace_mode == "auto":
            return engine_is_local(self.host)
        return self.workspace_mode == "mount"

    @property
    def capabilities(self) -> Capabilities:
        """A container's start is worth taking off the critical path (``prepares_ahead``); the
        workspace is shared when it is mounted (``shares_workspace``)."""
        shares = self.shares_workspace
        return Capabilities(
            shares_workspace=shares,
            prepares_ahead=True,
            keeps_failed=True,
            streams_files=True,
            layered_workspace=not shares and self.layers.works,
        )

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            import docker
            from docker.errors import DockerException

            host = self.host
            probe_engine(host)
            ssh = host.startswith("ssh://")  # through the system's ssh client, as the docker CLI does
            try:
                if self._host:
                    self._client = docker.DockerClient(base_url=host, use_ssh_client=ssh)
                else:
                    self._client = docker.from_env(use_ssh_client=ssh)
            except DockerException as e:
                raise unreachable(e, self.host) from e
            self._answered = True  # the client asked the engine for its API version: no ping needed
        return self._client

    def check(self) -> None:
        """Raise EngineUnavailable unless the engine answers; asked once per backend (a run's setup
        asks in more than one place, and an engine lost later is found where it is used)."""
        from docker.errors import DockerException

        try:
            client = self.client
            if self._answered:
                return
            client.ping()
        except (DockerException, OSError) as e:  # OSError: requests' ConnectionError and friends
            raise unreachable(e, self.host) from e
        self._answered = True

    # -- the stage life cycle --------------------------------------------------------------
    def prepare(self, spec: StageSpec) -> StageHandle:
        if spec.image is None:
            raise StageFailed(f"Stage '{spec.stage}' has no image to run in", stage=spec.stage)
        try:
            return self._prepare(spec)
        except OSError as e:  # requests' ConnectionError and friends: the engine is not there
            raise self.engine_gone(e) from e

    def engine_gone(self, e: BaseException) -> EngineUnavailable:
        """The error of a stage whose engine went away (``e``) while it used it."""
        return EngineUnavailable(
            f"The Docker engine at {self.host} went away ({engine_message(e)}); the stages that needed it failed."
            " Start it again (pipekit cleanup --all then removes what the run left)"
        )

    def _prepare(self, spec: StageSpec) -> StageHandle:
        assert spec.image is not None
        from docker.errors import APIError

        self.images.ensure_image(spec.image)
        for volume in spec.volumes:
            self.housekeeping.ensure_cache_volume(volume, spec)
        prepared = StageContainer()
        workdir = stage_workdir(spec)
        workspace_dir = WORKDIR if spec.with_workspace else None
        handle = StageHandle(spec=spec, ref=prepared, where="", workdir=workdir, workspace_dir=workspace_dir)
        layered = not self.shares_workspace and spec.with_workspace and self.layers.works
        try:
            network = self.services.start(spec, prepared) if spec.services else None
            binds = self._layer(spec, prepared) if layered else {}
            prepared.container = self._create_stage_container(spec, network, workdir, binds)
            prepared.shell = self.attach_shell(prepared.container)
            self.client.api.start(prepared.container)
        except APIError as e:
            self.release(handle)
            if layered and "mount" in engine_message(e).lower():  # the overlay: this engine gets whole copies
                self.layers.works = False
                return self._prepare(spec)
            why = engine_message(e)
            if "executable file not found" in why or "no such file" in why.lower():
                raise StageFailed(
                    f"Image '{spec.image}' has no shell `sh`, which pipekit needs to run stage"
                    f" '{spec.stage}' commands in it. Use an image with a shell ({why})",
                    stage=spec.stage,
                ) from e
            raise BackendError(f"Cannot start the container of stage '{spec.stage}' ({spec.image}): {why}") from e
        except BaseException:
            self.release(handle)
            raise
        return attrs.evolve(handle, where=f"container {prepared.container[:12]}")

    def _layer(self, spec: StageSpec, prepared: StageContainer) -> dict[str, dict[str, str]]:
        """The stage's view of the run's base copy of the workspace (made now if there is none): its binds."""
        prepared.workspace_base = self.layers.base_for(spec)
        prepared.volumes, binds = self.layers.stage_volumes(spec, prepared.workspace_base)
        return binds

    # -- copy mode by difference (LayeredWorkspace) ------------------------------------------
    changes_dir = CHANGES_DIR

    def workspace_base(self, handle: StageHandle) -> Any:
        return getattr(handle.ref, "workspace_base", None)

    def exists(self, handle: StageHandle, path: str) -> bool:
        return self.files.exists(handle, path)

    def attach_shell(self, container: str) -> AttachedShell | None:
        """The container's own shell, to run its commands (None: they go through exec); attach
        before the container starts, or after (its ``sh`` waits on its open stdin)."""
        if self.host.startswith("ssh://"):  # docker-py's ssh sockets do not take writes
            return None
        return AttachedShell(self.client.api, container)

    def _create_stage_container(
        self, spec: StageSpec, network: str | None, workdir: str | None, layer: dict[str, dict[str, str]]
    ) -> str:
        from docker.utils import format_environment

        api = self.client.api
        binds = {volume: {"bind": path, "mode": "rw"} for volume, path in spec.volumes.items()}
        binds.update(layer)
        tmpfs = {}
        mounts = []
        if self.shares_workspace and spec.with_workspace:
            binds[str(spec.workspace)] = {"bind": WORKDIR, "mode": "rw"}
            # pipekit's own state (history, logs, cache) is out of a stage's reach: an empty,
            # read-only folder covers it in the container; .git is read-only and the secrets file
            # covered too (workspace_covers)
            tmpfs[f"{WORKDIR}/.pipekit"] = "ro,size=4k,mode=0555"
            mounts = workspace_covers(spec)
        # the proxies of ~/.docker/config.json, as create_container adds them
        proxies = getattr(api, "_proxy_configs", None)
        env = format_environment(dict(spec.env))
        env = proxies.inject_proxy_environment(env) if proxies else env
        config = api.create_container_config(
            spec.image,
            None,
            entrypoint=["sh"],
            stdin_open=True,
            environment=env,
            working_dir=workdir,
            labels=stage_labels(spec),
            host_config=api.create_host_config(
                binds=binds,
                tmpfs=tmpfs,
                mounts=mounts,
                network_mode=network,
                pids_limit=spec.pids or DEFAULT_PIDS_LIMIT,
                mem_limit=spec.memory,
                memswap_limit=spec.memory,  # no swap beyond the limit: over it, the kernel kills
                nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
                log_config={"type": "none"},  # the output goes to pipekit, not also to a log file of the engine
            ),
        )
        # the shell's stdin stays open when pipekit lets go of it (docker-py would close it with
        # the attach: a kept container's shell would end)
        config["StdinOnce"] = False
        container = api.create_container_from_config(config, container_name(spec.run_id, spec.stage))
        return str(container["Id"])

    def exec(
        self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink, *, strict: bool = True
    ) -> CommandResult:
        from docker.errors import APIError, NotFound

        spec = handle.spec
        start = time.monotonic()
        try:
            script = shell_script(command, strict)
            env = {**spec.secret_env, **env}
            prepared = stage_container(handle)
            shell = prepared.shell
            if shell is not None and shell.takes(env):
                code, stdout, stderr = shell.run(script, env, handle.workdir, on_line)
            else:
                code, stdout, stderr = self._exec_stream(
                    prepared.container, script, env, on_line, handle.workdir, prepared.streams
                )
        except NotFound as e:
            raise StageFailed(
                f"The container of stage '{spec.stage}' is gone (removed while `{command}` ran)",
                stage=spec.stage,
            ) from e
        except APIError as e:
            raise BackendError(f"Cannot run a command in stage '{spec.stage}': {engine_message(e)}") from e
        except Exception as e:  # the stream broke: the container was removed under us, or the engine left
            if not self._answers():
                raise self.engine_gone(e) from e
            raise StageFailed(
                f"Lost the container of stage '{spec.stage}' while `{command}` ran: {e}",
                stage=spec.stage,
            ) from e
        if code is None:  # the container went away before the command finished
            code = EXIT_KILLED if shell is None or shell.alive else self._shell_ended(handle)
        oom = code == EXIT_KILLED and spec.memory is not None and self._oom_killed(handle)
        return CommandResult(command, int(code), stdout, stderr, time.monotonic() - start, oom_killed=oom)

    def _shell_ended(self, handle: StageHandle) -> int:
        """A command's exit code when its container's shell went away under it: EXIT_KILLED when the
        container was removed (the stage was stopped) or stopped by someone; EngineUnavailable when
        the engine is stopping (it stops its containers first, then goes)."""
        from docker.errors import DockerException, NotFound

        prepared = stage_container(handle)
        if prepared.shell is not None and prepared.shell.released:
            return EXIT_KILLED
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                self.client.api.inspect_container(prepared.container)
            except NotFound:
                return EXIT_KILLED
            except (DockerException, OSError) as e:
                raise self.engine_gone(e) from e
            time.sleep(0.2)
        return EXIT_KILLED

    def _answers(self) -> bool:
        """Whether the engine answers a ping within a few seconds."""
        import docker

        probe = None
        try:
            probe = docker.DockerClient(base_url=self.host, timeout=3) if self._host else None
            (probe or self.client).ping()
            return True
        except Exception:
            return False
        finally:
            if probe is not None:
                probe.close()

    def _oom_killed(self, handle: StageHandle) -> bool:
        """Whether the kernel killed a process of the stage's container for memory (its cgroup's
        oom_kill count; cgroup v1 or v2)."""
        files = "/sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events"
        try:
            _code, out, _err = self._exec_stream(
                container_of(handle), f"cat {files} 2>/dev/null; true", {}, lambda *_: None, None
            )
        except Exception:
            return False
        counts = [int(line.split()[1]) for line in out.text().splitlines() if line.startswith("oom_kill ")]
        return any(counts)

    def _exec_stream(
        self,
        container: str,
        command: str,
        env: Mapping[str, str],
        on_line: LineSink,
        workdir: str | None,
        streams: set[Any] | None = None,
    ) -> tuple[int | None, Captured, Captured]:
        from docker.utils.socket import STDERR, frames_iter

        api = self.client.api
        out = LineSplitter("stdout", on_line)
        err = LineSplitter("stderr", on_line)
        environment = {**env, SCRIPT_VAR: command}  # the command travels here, not on the command line
        exec_id = api.exec_create(container, RUN_SCRIPT, environment=environment, workdir=workdir)["Id"]
        sock = api.exec_start(exec_id, socket=True)
        streams = streams if streams is not None else set()
        streams.add(sock)
        try:
            for stream_id, data in frames_iter(sock, tty=False):
                (err if stream_id == STDERR else out).feed(data)
        finally:
            streams.discard(sock)
            close_stream(sock)
        stdout, stderr = out.close(), err.close()
        return api.exec_inspect(exec_id).get("ExitCode"), stdout, stderr

    def release(self, handle: StageHandle) -> None:
        prepared = handle.ref
        if not isinstance(prepared, StageContainer):
            return
        if prepared.shell is not None:
            prepared.shell.released = True  # a command still running is killed: EXIT_KILLED
        try:
            for cid in [prepared.container, *prepared.services]:
                if cid:
                    self.remove_container(cid)
            if prepared.network:
                remove_network(self.client.api, prepared.network)
            self.layers.remove(prepared.volumes)
        except OSError as e:
            raise self.engine_gone(e) from e
        finally:
            if prepared.shell is not None:  # after the container: a command still running sees its end
                prepared.shell.close()

    def cleanup(self, run_id: str) -> None:
        from docker.errors import DockerException

        label = {"label": f"{LABEL_RUN}={run_id}"}
        try:
            for c in [c for c in self.client.api.containers(all=True, filters=label) if not is_kept(c)]:
                self.remove_container(c["Id"])  # (a container kept after a failure goes with `pipekit cleanup RUN`)
            for n in self.client.api.networks(filters=label):
                remove_network(self.client.api, n["Id"])
            self.layers.cleanup(run_id)
        except (DockerException, OSError):
            return  # the engine is gone: `pipekit cleanup`, or the next run, removes what is left

    def remove_container(self, container_id: str) -> None:
        """Remove a container of this engine (and its anonymous volumes); a gone one is fine."""
        remove_container(self.client.api, container_id)

    def wait_healthy(self, spec: StageSpec, svc: ServiceSpec, container_id: str) -> None:
        """Wait until the service ``svc`` of ``spec`` (its container in this engine) is healthy."""
        self.services.wait_healthy(spec, svc, container_id)

    # -- the protocol's methods of the parts ---------------------------------------------------
    def ensure_image(self, image: str) -> None:
        self.images.ensure_image(image)

    def image_problem(self, image: str) -> str | None:
        return self.images.image_problem(image)

    def image_id(self, origin: Origin, image: str) -> str:
        return self.images.image_id(origin, image)

    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        return self.images.build(spec, on_line)

    def tag(self, origin: Origin, image: Image, ref: str) -> Image:
        return self.images.tag(origin, image, ref)

    def push(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> str:
        return self.images.push(origin, ref, auth, on_line)

    def pull(self, origin: Origin, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> Image:
        return self.images.pull(origin, ref, auth, on_line)

    def run_once(
        self, origin: Origin, image: str, command: list[str] | None, env: Mapping[str, str], on_line: LineSink
    ) -> CommandResult:
        return self.images.run_once(origin, image, command, env, on_line)

    def start_detached(self, spec: DetachedSpec, stage: StageHandle | None) -> str:
        return self.detached.start(spec, stage)

    def detached_logs(self, detached: str) -> str:
        return self.detached.logs(detached)

    def stop_detached(self, detached: str, timeout: float) -> int | None:
        return self.detached.stop(detached, timeout)

    def wait_detached(self, detached: str, timeout: float | None) -> int:
        return self.detached.wait(detached, timeout)

    def remove_detached(self, detached: str) -> None:
        self.detached.remove(detached)

    def put_files(self, handle: StageHandle, archive: bytes, dest: str) -> None:
        self.files.put_files(handle, archive, dest)

    def get_files(self, handle: StageHandle, path: str) -> bytes | None:
        return self.files.get_files(handle, path)

    def put_stream(self, handle: StageHandle, chunks: Iterable[bytes], dest: str) -> None:
        self.files.put_stream(handle, chunks, dest)

    def get_stream(self, handle: StageHandle, path: str) -> IO[bytes] | None:
        return self.files.get_stream(handle, path)

    def cache_volumes(self) -> list[CacheVolume]:
        return self.housekeeping.cache_volumes()

    def remove_volume(self, name: str) -> bool:
        return self.housekeeping.remove_volume(name)

    def leftovers(self) -> dict[str, bool]:
        return self.housekeeping.leftovers()

    def sweep(self) -> list[str]:
        """Remove what runs whose process is gone left behind, and the workspace's base copies
        a newer one replaced (or never completed); the runs' ids."""
        lost = sweep_lost(self.leftovers, self.cleanup)
        # (off the run's critical path: removing a 20,000-file base takes seconds; one left by a
        # process that ends first goes at the next sweep)
        threading.Thread(
            target=self.layers.drop_bases, kwargs={"quiet": True}, name="pipekit-bases", daemon=True
        ).start()
        return lost

    def drop_workspace_bases(self, workspace: Path) -> list[str]:
        """Remove the base copies of ``workspace`` kept in the engine that no stage uses now
        (``pipekit cleanup --all`` in that folder); their names."""
        dropped = self.layers.drop_bases(superseded=False, folder=base_path_label(workspace))
        for name in dropped:
            drop_record(workspace, name)
        return dropped

    def keep(self, handle: StageHandle) -> list[str]:
        return self.housekeeping.keep(handle)

    def kept(self) -> dict[str, list[str]]:
        return self.housekeeping.kept()

    def drop_kept(self, run_id: str) -> int:
        dropped = self.housekeeping.drop_kept(run_id)
        self.layers.cleanup(run_id)
        return dropped

    def kept_container(self, run_id: str, stage: str) -> str | None:
        return self.housekeeping.kept_container(run_id, stage)
