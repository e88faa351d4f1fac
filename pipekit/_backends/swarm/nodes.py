"""The Swarm backend's view of the swarm: its nodes, the engine of each, and a task's way to running.

A stage's commands run with ``exec`` in its task's container, which only the engine of the node
Swarm put it on can do. Each node names its engine in the label ``io.pipekit.engine``
(``tcp://10.0.0.7:2376`` with the usual ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``, or
``ssh://builder@10.0.0.7``); the manager pipekit talks to needs none.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from pipekit._backends.docker.engine import probe_engine
from pipekit.exceptions import BackendError, StageFailed

if TYPE_CHECKING:
    from pipekit._backends.docker.backend import DockerBackend

__all__ = ["ENGINE_LABEL", "Nodes", "Task", "Watch", "wait_running"]

ENGINE_LABEL = "io.pipekit.engine"
#: how long a stage may wait for a node that satisfies its placement constraints
PLACEMENT_TIMEOUT_ENV = "PIPEKIT_SWARM_PLACEMENT_TIMEOUT"
DEFAULT_PLACEMENT_TIMEOUT = 30.0
ENDED = ("complete", "failed", "rejected", "shutdown", "orphaned", "remove")


@attrs.define(eq=False)
class Task:
    """A service pipekit made (a stage, or one of its services) and where its one task runs."""

    service: str  # the service's id
    name: str
    node_id: str = ""
    node: str = ""  # the node's hostname
    container: str = ""
    engine: DockerBackend | None = None
    lost: str | None = None  # "was drained", "went down": why its node took the task away
    streams: set[Any] = attrs.field(factory=set)  # the exec streams open in its container
    shell: Any = None  # its container's own shell (pipekit/_backends/docker/shell.py), once the task runs


class Watch:
    """Watches the nodes that run stages: a stage whose node is drained or goes down loses its
    container (Swarm itself lets a job's task run on), so that its commands end and the stage fails
    naming the node. A thread of its own polls the swarm while any stage runs."""

    def __init__(self, manager: DockerBackend, nodes: Nodes, interval: float = 1.0) -> None:
        self._manager, self._nodes, self._interval = manager, nodes, interval
        self._tasks: set[Task] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, task: Task) -> None:
        with self._lock:
            self._tasks.add(task)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pipekit-swarm-watch", daemon=True)
                self._thread.start()

    def remove(self, task: Task) -> None:
        with self._lock:
            self._tasks.discard(task)

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                tasks = list(self._tasks)
                if not tasks:
                    self._thread = None
                    return
            try:
                nodes = {n["ID"]: n for n in self._manager.client.api.nodes()}
            except Exception:
                continue  # the manager is busy or gone: the stages' own calls find out
            for task in tasks:
                node = nodes.get(task.node_id, {})
                if node.get("Spec", {}).get("Availability") == "drain":
                    self._take_away(task, "was drained")
                elif node.get("Status", {}).get("State") == "down":
                    self._take_away(task, "went down")

    def _take_away(self, task: Task, why: str) -> None:
        if task.lost:
            return
        task.lost = why
        self.remove(task)
        try:
            if task.engine is not None:
                task.engine.remove_container(task.container)  # ends its commands
        except Exception:
            pass
        for stream in list(task.streams):  # an engine that does not answer: end them here
            try:
                stream.close()
            except Exception:
                pass
        if task.shell is not None:
            task.shell.close()


def _node_client(url: str) -> Any:
    """A client for a node's engine; TLS as the docker CLI takes it from the environment."""
    import docker
    from docker.utils import kwargs_from_env

    kwargs = kwargs_from_env() if url.startswith("tcp://") else {}
    kwargs["base_url"] = url
    return docker.DockerClient(**kwargs, use_ssh_client=url.startswith("ssh://"))


class Nodes:
    """The swarm's nodes as pipekit needs them: each one's name and engine, and which went bad."""

    def __init__(self, manager: DockerBackend) -> None:
        self._manager = manager
        self._engines: dict[str, tuple[str, DockerBackend]] = {}
        self._lock = threading.Lock()
        self.bad: dict[str, str] = {}  # node id -> its name, for nodes that went down during the run
        self._own_id: str | None = None

    @property
    def own_id(self) -> str:
        if self._own_id is None:
            self._own_id = str(self._manager.client.info()["Swarm"].get("NodeID") or "")
        return self._own_id

    def engine(self, node_id: str) -> tuple[str, DockerBackend]:
        """The node's name and a backend on its engine (the manager's own for the manager)."""
        with self._lock:
            if node_id in self._engines:
                return self._engines[node_id]
        from pipekit._backends.docker.backend import DockerBackend

        node = self._manager.client.api.inspect_node(node_id)
        name = str(node.get("Description", {}).get("Hostname") or node_id[:12])
        url = (node.get("Spec", {}).get("Labels") or {}).get(ENGINE_LABEL)
        if url:
            backend = DockerBackend(_node_client(url), workspace="copy", host=url)
        elif node_id == self.own_id:
            backend = DockerBackend(self._manager.client, workspace="copy", host=self._manager.host)
        else:
            raise BackendError(
                f"Swarm placed a stage on node {name}, whose engine pipekit cannot reach: give the node"
                f" the label {ENGINE_LABEL} (docker node update --label-add {ENGINE_LABEL}=tcp://ADDRESS:2376"
                f" {name}); see docs/swarm.md"
            )
        with self._lock:
            self._engines[node_id] = (name, backend)
        return name, backend

    def reachable(self) -> list[tuple[str, DockerBackend]]:
        """The engines of every node that answers now (for cleaning up)."""
        found = []
        for node in self._manager.client.api.nodes():
            try:
                name, backend = self.engine(node["ID"])
                probe_engine(backend.host, timeout=3)  # a node that is down does not hold the cleanup up
                backend.client.ping()
            except Exception:
                continue
            found.append((name, backend))
        return found

    def capacity(self) -> tuple[int, int]:
        """The most CPUs (in nano-CPUs) and memory (bytes) any ready node has."""
        cpus = memory = 0
        for node in self._manager.client.api.nodes():
            if node.get("Status", {}).get("State") != "ready":
                continue
            res = node.get("Description", {}).get("Resources", {})
            cpus, memory = max(cpus, res.get("NanoCPUs", 0)), max(memory, res.get("MemoryBytes", 0))
        return cpus, memory


def placement_timeout() -> float:
    raw = os.environ.get(PLACEMENT_TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_PLACEMENT_TIMEOUT
    except ValueError:
        return DEFAULT_PLACEMENT_TIMEOUT


def _newest(tasks: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return max(tasks, key=lambda t: t.get("CreatedAt", ""), default=None)


def wait_running(
    api: Any,
    task: Task,
    stage: str,
    constraints: tuple[str, ...],
    nodes: Nodes,
    limits: tuple[int, int],
    timeout: float | None = None,
) -> Mapping[str, Any]:
    """Wait until the service's task runs and return it. A task Swarm cannot place on any node fails
    the stage: at once when it asks for more than any node has, after the placement timeout when no
    node satisfies its constraints."""
    unplaced_since: float | None = None
    pause = 0.05
    while True:
        t = _newest(api.tasks(filters={"service": task.service}))
        if t is None:
            if not api.services(filters={"id": task.service}):
                raise StageFailed(f"Stage '{stage}' was stopped before Swarm started it", stage=stage)
        else:
            status = t.get("Status", {})
            state, err = status.get("State", ""), status.get("Err") or ""
            if state == "running":
                return t
            if state in ENDED:
                node = _node_name(nodes, t.get("NodeID"))
                why = err or status.get("Message") or state
                raise StageFailed(f"Swarm could not start {task.name}{node}: {why}", stage=stage)
            if "no suitable node" in err:
                _too_big(nodes, limits, stage, task.name)
                unplaced_since = unplaced_since or time.monotonic()
                if time.monotonic() - unplaced_since > (timeout or placement_timeout()):
                    raise StageFailed(_unplaceable(task.name, constraints, err), stage=stage)
        time.sleep(pause)
        pause = min(pause * 1.5, 0.5)


def _node_name(nodes: Nodes, node_id: str | None) -> str:
    if not node_id:
        return ""
    try:
        return f" on node {nodes.engine(node_id)[0]}"
    except Exception:
        return f" on node {node_id[:12]}"


def _too_big(nodes: Nodes, limits: tuple[int, int], stage: str, what: str) -> None:
    cpus, memory = limits
    if not cpus and not memory:
        return
    most_cpus, most_memory = nodes.capacity()
    asks = [f"{cpus / 1e9:g} CPUs"] if cpus else []
    asks += [f"{memory / 2**20:.0f} MiB of memory"] if memory else []
    if cpus > most_cpus or memory > most_memory:
        raise StageFailed(
            f"No node of the swarm can run {what}: it asks for {' and '.join(asks)}, and the largest ready node"
            f" has {most_cpus / 1e9:g} CPUs and {most_memory / 2**20:.0f} MiB. Lower resources= or add a bigger node",
            stage=stage,
        )


def _unplaceable(what: str, constraints: tuple[str, ...], err: str) -> str:
    wanted = ", ".join(constraints) if constraints else "(no placement constraints)"
    return (
        f"No node of the swarm satisfies the placement of {what}: {wanted} ({err}); waited"
        f" {placement_timeout():g}s ({PLACEMENT_TIMEOUT_ENV}). Label a node to match"
        " (docker node update --label-add NAME=VALUE NODE) or change placement="
    )
