"""The Swarm backend: each stage is a one-task ``replicated-job`` service that Swarm places.

pipekit keeps scheduling the DAG; Swarm decides where each stage runs (its ``placement=``
constraints, its ``resources=`` as reservations and limits, healthy nodes). Once the task runs,
``ctx.sh`` is an ``exec`` in its container through the engine of the node it landed on (see
:mod:`pipekit._backends.swarm.nodes`), with the same streaming, exit codes and masking as on one engine.

The workspace always travels (copy mode): no node shares the pipeline's folder. A stage that takes
it runs on a node pipekit chooses (:mod:`pipekit._backends.swarm.layered`), which keeps the run's
base copy, so that only differences travel; the whole copy is the fallback. Images a run
builds go to the registry of ``--registry`` (``PIPEKIT_REGISTRY``) and nodes pull them by digest.
A stage's services are services too, on an attachable overlay network of their own, reachable by
name (DNS round robin: the swarm's virtual IPs need IPVS, which not every node has).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import attrs

from pipekit._backends.docker.backend import DEFAULT_PIDS_LIMIT, DockerBackend, StageContainer, stage_workdir
from pipekit._backends.docker.engine import (
    LABEL_CACHE,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN,
    LABEL_SERVICE,
    LABEL_STAGE,
    WORKDIR,
    owner_alive,
    stage_labels,
)
from pipekit._backends.docker.layers import CHANGES_DIR
from pipekit._backends.swarm.layered import NodeLayers, view_mounts
from pipekit._backends.swarm.nodes import Nodes, Task, Watch, wait_running
from pipekit._core.util import slug
from pipekit.backend import (
    BuildSpec,
    Capabilities,
    CommandResult,
    DetachedSpec,
    Image,
    LineSink,
    Origin,
    ServiceSpec,
    StageHandle,
    StageSpec,
)
from pipekit.exceptions import BackendError, EngineUnavailable, StageFailed

__all__ = ["REGISTRY_ENV", "SwarmBackend"]

REGISTRY_ENV = "PIPEKIT_REGISTRY"
#: the secrets (environment or --secrets-file) with the login of the run's registry, when it needs one
REGISTRY_USER, REGISTRY_PASSWORD = "PIPEKIT_REGISTRY_USER", "PIPEKIT_REGISTRY_PASSWORD"
STOP_GRACE_NS = 2_000_000_000  # a drained node stops a stage's container this fast
#: how long a stage pinned to the node of the run's base copy may wait for it (seconds)
PINNED_TIMEOUT = 5.0


@attrs.define
class _Placed:
    """What prepare made for a stage: its task, its services' tasks, their network."""

    stage: Task | None = None
    services: list[Task] = attrs.field(factory=list)
    network: str | None = None
    #: the workspace by difference: the node pipekit pinned the stage to, its engine, the run's base
    #: copy there and the stage's volumes (its view first)
    pinned: str = ""
    layer_engine: DockerBackend | None = None
    workspace_base: Any = None
    volumes: list[str] = attrs.field(factory=list)


def _limits(spec: StageSpec) -> tuple[int, int]:
    """The stage's CPUs (nano-CPUs) and memory (bytes) as Swarm takes them; 0: no limit."""
    return int(spec.cpus * 1e9) if spec.cpus else 0, spec.memory or 0


def _service_name(spec: StageSpec, what: str) -> str:
    """A unique service name: letters, digits and dashes, at most 63 characters."""
    suffix = os.urandom(3).hex()
    base = slug(f"{spec.stage}-{what}" if what else spec.stage, lower=True, keep="-")
    return f"pipekit-{slug(spec.run_id, lower=True, keep='-')}"[:30] + f"-{base}"[:26] + f"-{suffix}"


class SwarmBackend(DockerBackend):
    """Runs stages as Swarm tasks; ``DOCKER_HOST`` points at a manager."""

    name = "swarm"

    def __init__(
        self,
        client: Any = None,
        *,
        host: str | None = None,
        registry: str | None = None,
        registry_auth: Callable[[], Mapping[str, str] | None] | None = None,
    ) -> None:
        super().__init__(client, workspace="copy", host=host)
        self.registry = (registry or os.environ.get(REGISTRY_ENV) or "").rstrip("/") or None
        self._registry_auth = registry_auth or (lambda: None)
        self._logged_in = False
        self._manager_checked = False
        self.nodes = Nodes(self)
        self._watch = Watch(self, self.nodes)
        self.node_layers = NodeLayers(self, self.nodes)

    @property
    def shares_workspace(self) -> bool:
        return False

    @property
    def capabilities(self) -> Capabilities:
        """Swarm places stages (``placement=`` means something here); an image built in the run
        reaches other nodes only through a registry; ``--keep-failed`` is refused with a reason."""
        return Capabilities(
            prepares_ahead=True,
            places_stages=True,
            keeps_failed=True,
            images_need_registry=True,
            streams_files=True,
            layered_workspace=True,  # for the stages whose handle has a base (workspace_base)
        )

    def check(self) -> None:
        """The engine answers and is a manager of its swarm; asked once per backend."""
        if self._manager_checked:
            return
        super().check()
        swarm = self.client.info().get("Swarm") or {}
        if not swarm.get("ControlAvailable"):
            state = swarm.get("LocalNodeState") or "inactive"
            raise EngineUnavailable(
                f"The Docker engine at {self.host} is not a swarm manager (swarm: {state}). Run `docker swarm init`"
                " there, or point DOCKER_HOST at a manager of the swarm; see docs/swarm.md"
            )
        self._manager_checked = True

    # -- images travel through the registry ------------------------------------------------
    def _auth(self) -> Mapping[str, str] | None:
        auth = self._registry_auth()
        return {**auth, "serveraddress": self.registry} if auth and self.registry else None

    def _login(self) -> None:
        """Log the manager in to the run's registry, so that services carry the login to the nodes
        that pull from it (docker-py adds it to each service it creates)."""
        if self._logged_in:
            return
        auth = self._auth()
        if auth is None:
            return
        self.client.login(username=auth["username"], password=auth["password"], registry=self.registry)
        self._logged_in = True

    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        """Build on the manager, then push to the run's registry: nodes run it by digest."""
        image = super().build(spec, on_line)
        if self.registry is None:
            return image
        origin = Origin(spec.run_id, spec.stage)
        repo = f"{self.registry}/pipekit/{slug(spec.stage, lower=True, keep='-')}"
        ref = f"{repo}:{slug(spec.run_id, lower=True, keep='-')}"
        self.tag(origin, image, ref)
        digest = self.push(origin, ref, self._auth(), on_line)
        return attrs.evolve(image, remote=f"{repo}@{digest}")

    # -- the stage life cycle ----------------------------------------------------------------
    def prepare(self, spec: StageSpec) -> StageHandle:
        """Create the stage's service (and its services'), wait for its task to run, attach to its
        container's shell through the engine of its node."""
        if spec.image is None:
            raise StageFailed(f"Stage '{spec.stage}' has no image to run in", stage=spec.stage)
        try:
            return self._place(spec)
        except OSError as e:  # requests' ConnectionError and friends: the manager is not there
            raise self.engine_gone(e) from e

    def _place(self, spec: StageSpec, layered: bool = True) -> StageHandle:
        placed = _Placed()
        workdir = stage_workdir(spec)
        handle = StageHandle(
            spec=spec, ref=placed, where="", workdir=workdir, workspace_dir=WORKDIR if spec.with_workspace else None
        )
        try:
            self._login()
            if spec.services:
                placed.network = self._network(spec)
                for svc in spec.services:
                    placed.services.append(self._create(spec, svc.name, self._service_task(spec, svc, placed.network)))
                for svc, task in zip(spec.services, placed.services, strict=True):
                    self._run(spec, task)
                    assert task.engine is not None
                    task.engine.wait_healthy(spec, svc, task.container)
            mounts = self._view(spec, placed) if layered and spec.with_workspace else []
            placed.stage = self._create(spec, "", self._stage_task(spec, workdir, placed, mounts), job=True)
            try:
                self._run(spec, placed.stage, spec.placement, _limits(spec), pinned=bool(placed.pinned))
            except StageFailed as e:
                if not placed.pinned or not ("mount" in str(e).lower() or "no suitable node" in str(e)):
                    raise
                if "mount" in str(e).lower():  # no overlay volume on that node: whole copies there
                    self.node_layers.broken[placed.pinned] = str(e)
                self.release(handle)
                return self._place(spec, layered=False)  # Swarm places it; the whole workspace travels
            assert placed.stage.engine is not None
            placed.stage.shell = placed.stage.engine.attach_shell(placed.stage.container)  # (after start: sh waits)
            self._watch.add(placed.stage)
        except BaseException:
            self.release(handle)
            raise
        return attrs.evolve(handle, where=f"node {placed.stage.node}, container {placed.stage.container[:12]}")

    def _constraints(self, wanted: tuple[str, ...]) -> list[str]:
        return [*wanted, *(f"node.id!={node_id}" for node_id in self.nodes.bad)]

    def _view(self, spec: StageSpec, placed: _Placed) -> list[Any]:
        """Pin the stage to a node, with the run's base copy of the workspace there and the stage's
        view of it: the service's mounts. No mounts (and no pin) when pipekit cannot choose the node
        or make the view there: Swarm places the stage and the whole workspace travels."""
        from docker.errors import DockerException

        avoid = {**self.nodes.bad, **self.node_layers.broken}
        node_id = self.node_layers.choose(spec, _limits(spec), avoid)
        if node_id is None:
            return []
        placed.pinned = node_id
        try:
            _name, placed.layer_engine = self.nodes.engine(node_id)
            placed.workspace_base, placed.volumes = self.node_layers.view(placed.layer_engine, spec, self._auth())
        except (DockerException, BackendError):
            self.node_layers.done(node_id)
            placed.pinned, placed.workspace_base = "", None
            return []
        return view_mounts(placed.volumes)

    def _stage_task(self, spec: StageSpec, workdir: str | None, placed: _Placed, view: list[Any]) -> Any:
        from docker.types import ContainerSpec, Mount, Placement, Resources, RestartPolicy, TaskTemplate

        cpus, memory = _limits(spec)
        mounts = [
            Mount(path, volume, labels={LABEL_CACHE: "true", LABEL_STAGE: spec.stage})
            for volume, path in spec.volumes.items()
        ] + view
        pinned = [f"node.id=={placed.pinned}"] if placed.pinned else []
        container = ContainerSpec(
            spec.image,
            command=["sh"],  # waits on its open stdin, as in a container of the Docker backend
            open_stdin=True,
            env=dict(spec.env),
            workdir=workdir,
            labels=stage_labels(spec),
            mounts=mounts,
            stop_grace_period=STOP_GRACE_NS,
        )
        resources = Resources(
            cpu_limit=cpus or None,
            cpu_reservation=cpus or None,
            mem_limit=memory or None,
            mem_reservation=memory or None,
        )
        resources.setdefault("Limits", {})["Pids"] = spec.pids or DEFAULT_PIDS_LIMIT  # API 1.41; docker-py has no field
        return TaskTemplate(
            container,
            resources=resources,
            restart_policy=RestartPolicy("none"),
            placement=Placement(constraints=self._constraints(spec.placement) + pinned),
            networks=[placed.network] if placed.network else None,
        )

    def _service_task(self, spec: StageSpec, svc: ServiceSpec, network: str) -> Any:
        import shlex

        from docker.types import ContainerSpec, NetworkAttachmentConfig, Placement, RestartPolicy, TaskTemplate

        command = shlex.split(svc.command) if isinstance(svc.command, str) else svc.command
        container = ContainerSpec(
            svc.image,
            args=list(command) if command else None,
            env=dict(svc.env),
            labels={**stage_labels(spec), LABEL_SERVICE: svc.name},
            stop_grace_period=STOP_GRACE_NS,
        )
        return TaskTemplate(
            container,
            restart_policy=RestartPolicy("none"),
            placement=Placement(constraints=self._constraints(())),
            networks=[NetworkAttachmentConfig(network, aliases=[svc.name])],
        )

    def _network(self, spec: StageSpec) -> str:
        name = _service_name(spec, "net")
        return str(
            self.client.api.create_network(name, driver="overlay", attachable=True, labels=stage_labels(spec))["Id"]
        )

    def _create(self, spec: StageSpec, what: str, template: Any, *, job: bool = False) -> Task:
        from docker.types import EndpointSpec, ServiceMode

        mode = ServiceMode("replicated-job") if job else ServiceMode("replicated", replicas=1)
        endpoint = EndpointSpec(mode="dnsrr") if not job else None
        name = _service_name(spec, what)
        created = self.client.api.create_service(
            template, name=name, labels=stage_labels(spec), mode=mode, endpoint_spec=endpoint
        )
        label = f"service '{what}' of stage '{spec.stage}'" if what else f"stage '{spec.stage}'"
        return Task(service=str(created["ID"]), name=label)

    def _run(
        self,
        spec: StageSpec,
        task: Task,
        constraints: tuple[str, ...] = (),
        limits: tuple[int, int] = (0, 0),
        *,
        pinned: bool = False,
    ) -> None:
        """Wait for the task to run, then find its container and its node's engine. A task pinned to
        a node that cannot take it now is given up on sooner (it is placed again by Swarm)."""
        timeout = PINNED_TIMEOUT if pinned else None
        t = wait_running(self.client.api, task, spec.stage, constraints, self.nodes, limits, timeout=timeout)
        task.node_id = str(t["NodeID"])
        task.container = str(t["Status"]["ContainerStatus"]["ContainerID"])
        task.node, task.engine = self.nodes.engine(task.node_id)

    def start_detached(self, spec: DetachedSpec, stage: StageHandle | None) -> str:
        raise StageFailed(
            f"Stage '{spec.origin.stage}': ctx.docker.run(..., detach=True) is not available on a swarm (the"
            " container would not be on the stage's node). Declare it as services=[pk.Service(...)] instead",
            stage=spec.origin.stage,
        )

    # -- commands and files, through the node's engine -----------------------------------------
    def _task(self, handle: StageHandle) -> Task:
        placed = handle.ref
        if not isinstance(placed, _Placed) or placed.stage is None or placed.stage.engine is None:
            raise StageFailed(f"Stage '{handle.spec.stage}' has no task", stage=handle.spec.stage)
        return placed.stage

    def _on_node(self, handle: StageHandle, what: str, call: Callable[[DockerBackend, StageHandle], Any]) -> Any:
        """``call`` on the engine of the stage's node; a node lost meanwhile fails the stage naming it."""
        task = self._task(handle)
        assert task.engine is not None
        inner = attrs.evolve(
            handle, ref=StageContainer(container=task.container, streams=task.streams, shell=task.shell)
        )
        try:
            result = call(task.engine, inner)
        except (EngineUnavailable, OSError) as e:
            task.lost = task.lost or "went down"
            self.nodes.bad[task.node_id] = task.node
            raise self._lost(handle, task, what) from e
        except StageFailed as e:
            if task.lost:
                raise self._lost(handle, task, what) from e
            raise
        if task.lost:
            raise self._lost(handle, task, what)
        return result

    def _lost(self, handle: StageHandle, task: Task, what: str) -> StageFailed:
        engine = (
            f" (its engine at {task.engine.host} stopped answering)" if task.lost == "went down" and task.engine else ""
        )
        return StageFailed(
            f"Node {task.node} {task.lost} while stage '{handle.spec.stage}' {what}{engine}; a stage with"
            " retries= runs again on another node",
            stage=handle.spec.stage,
        )

    def exec(
        self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink, *, strict: bool = True
    ) -> CommandResult:
        result: CommandResult = self._on_node(
            handle, f"ran `{command}`", lambda engine, inner: engine.exec(inner, command, env, on_line, strict=strict)
        )
        return result

    def put_files(self, handle: StageHandle, archive: bytes, dest: str) -> None:
        self._on_node(handle, "got its files", lambda engine, inner: engine.put_files(inner, archive, dest))

    def put_stream(self, handle: StageHandle, chunks: Iterable[bytes], dest: str) -> None:
        self._on_node(handle, "got its files", lambda engine, inner: engine.put_stream(inner, chunks, dest))

    def get_stream(self, handle: StageHandle, path: str) -> IO[bytes] | None:
        if self._task(handle).lost:
            return None  # what the stage changed was lost with its node; the stage fails
        stream: IO[bytes] | None = self._on_node(
            handle, "gave back its files", lambda engine, inner: engine.get_stream(inner, path)
        )
        return stream

    def get_files(self, handle: StageHandle, path: str) -> bytes | None:
        if self._task(handle).lost:
            return None  # what the stage changed was lost with its node; the stage fails
        files: bytes | None = self._on_node(
            handle, "gave back its files", lambda engine, inner: engine.get_files(inner, path)
        )
        return files

    # -- copy mode by difference (LayeredWorkspace) -------------------------------------------
    changes_dir = CHANGES_DIR

    def workspace_base(self, handle: StageHandle) -> Any:
        placed = handle.ref
        return placed.workspace_base if isinstance(placed, _Placed) else None

    def exists(self, handle: StageHandle, path: str) -> bool:
        found: bool = self._on_node(
            handle, "gave back its files", lambda engine, inner: engine.files.exists(inner, path)
        )
        return found

    def keep(self, handle: StageHandle) -> list[str]:
        raise BackendError("--keep-failed keeps containers on one engine only; on a swarm the stage's task is removed")

    # -- removal ---------------------------------------------------------------------------
    def release(self, handle: StageHandle) -> None:
        placed = handle.ref
        if not isinstance(placed, _Placed):
            return
        tasks = [t for t in [placed.stage, *placed.services] if t is not None]
        for task in tasks:
            if task.shell is not None:
                task.shell.released = True  # a command still running ends with 137, as it is killed
            self._watch.remove(task)
            self._remove_service(task.service)
        for task in tasks:
            if task.engine is not None and task.container and task.node_id not in self.nodes.bad:
                try:
                    task.engine.remove_container(task.container)
                except Exception:
                    pass  # its node is gone: the swarm removes the task's container when it is back
            if task.shell is not None:
                task.shell.close()
        if placed.network:
            self._remove_overlay(placed.network)
        if placed.pinned:
            self.node_layers.done(placed.pinned)
            if placed.layer_engine is not None and placed.pinned not in self.nodes.bad:
                try:
                    placed.layer_engine.layers.remove(placed.volumes)
                except Exception:
                    pass  # its node is gone: the run's cleanup (or the next run's sweep) removes them
            placed.pinned = ""

    def _remove_service(self, service: str) -> None:
        from docker.errors import NotFound

        try:
            self.client.api.remove_service(service)
        except NotFound:
            pass

    def _remove_overlay(self, network: str) -> None:
        """An overlay network goes once the tasks on it are gone on every node: try for a while."""
        from docker.errors import APIError, NotFound

        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.api.remove_network(network)
                return
            except NotFound:
                return
            except APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def cleanup(self, run_id: str) -> None:
        """Remove the run's services, then its containers on every node that answers, then its networks."""
        from docker.errors import DockerException

        label = {"label": f"{LABEL_RUN}={run_id}"}
        self.node_layers.forget(run_id)
        try:
            for s in self.client.api.services(filters=label):
                self._remove_service(s["ID"])
            for _name, engine in self.nodes.reachable():
                engine.cleanup(run_id)
            for n in self.client.api.networks(filters=label):
                self._remove_overlay(n["Id"])
        except (DockerException, OSError):
            return  # `pipekit cleanup RUN` tries again

    def leftovers(self) -> dict[str, bool]:
        """Runs with services in the swarm, or containers or networks on any node that answers."""
        runs: dict[str, bool] = {}

        def note(labels: Mapping[str, str]) -> None:
            run_id = labels.get(LABEL_RUN)
            if run_id:
                runs[run_id] = runs.get(run_id, False) or owner_alive(labels.get(LABEL_OWNER))

        for s in self.client.api.services(filters={"label": LABEL_MANAGED}):
            note(s.get("Spec", {}).get("Labels") or {})
        for _name, engine in self.nodes.reachable():
            for run_id, alive in engine.leftovers().items():
                runs[run_id] = runs.get(run_id, False) or alive
        return runs
