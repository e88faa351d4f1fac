"""The workspace by difference on a swarm: pipekit chooses the stage's node, keeps the run's base
copy of the workspace there, and gives the stage an overlay view of it, as on one engine.

An overlay volume names its lower folder by its path on the node, which is known only once the
node is: so a stage that takes the workspace is pinned (``node.id==``) to a node pipekit chooses
among those its own ``placement=`` constraints allow (evaluated here the way Swarm does; a
constraint pipekit cannot evaluate leaves the stage to Swarm, with the whole workspace copied as
before). It prefers a node that already holds the run's base, unless that node already has twice
as many of the run's stages as it has CPUs (a stage prepared ahead of its upstream ones counts):
another node then gets a base copy of its own, which costs one whole copy. The base, the stage's
upper and work folders and its overlay view are made through the node's engine
(:class:`~pipekit._backends.docker.layers.Layers`, the same as on one engine); the service
mounts the view at ``/workspace`` and the upper read-only at ``/.pipekit-changes``, whose
content is all that comes back. A node where the overlay does not mount gets whole copies.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipekit._backends.docker.layers import CHANGES_DIR
from pipekit._backends.swarm.nodes import ENGINE_LABEL
from pipekit.backend import StageSpec

if TYPE_CHECKING:
    from pipekit._backends.docker.backend import DockerBackend
    from pipekit._backends.swarm.nodes import Nodes

__all__ = ["NodeLayers", "constraint_holds"]


def _node_values(node: Mapping[str, Any], key: str) -> list[str] | None:
    """What a node has for a constraint's key (an empty list: a label it lacks); None: a key
    pipekit does not evaluate."""
    desc, spec = node.get("Description") or {}, node.get("Spec") or {}
    plain = {
        "node.id": node.get("ID"),
        "node.hostname": desc.get("Hostname"),
        "node.role": spec.get("Role"),
        "node.platform.os": (desc.get("Platform") or {}).get("OS"),
        "node.platform.arch": (desc.get("Platform") or {}).get("Architecture"),
    }
    if key in plain:
        return [str(plain[key] or "")]
    for prefix, labels in (
        ("node.labels.", spec.get("Labels") or {}),
        ("engine.labels.", (desc.get("Engine") or {}).get("Labels") or {}),
    ):
        if key.startswith(prefix):
            name = key[len(prefix) :]
            return [str(v) for k, v in labels.items() if k.lower() == name.lower()]
    return None


def constraint_holds(node: Mapping[str, Any], constraint: str) -> bool | None:
    """Whether ``node`` (as the API lists it) satisfies one placement constraint, as Swarm decides
    (``==`` / ``!=``, values compared without case); None when pipekit cannot tell."""
    for op in ("==", "!="):
        key, sep, value = constraint.partition(op)
        if sep:
            break
    else:
        return None
    values = _node_values(node, key.strip().lower())
    if values is None:
        return None
    same = any(v.lower() == value.strip().lower() for v in values)
    return same if op == "==" else not same


class NodeLayers:
    """Chooses the node of each stage that takes the workspace, and makes its view there."""

    def __init__(self, manager: DockerBackend, nodes: Nodes) -> None:
        self._manager, self._nodes = manager, nodes
        self._lock = threading.Lock()
        self._based: dict[str, set[str]] = {}  # run id -> the nodes that hold (or are making) its base
        self.busy: Counter[str] = Counter()  # node id -> the stages pinned there that run now
        self.broken: dict[str, str] = {}  # node id -> why an overlay did not mount there (whole copies)

    def choose(self, spec: StageSpec, limits: tuple[int, int], avoid: Mapping[str, str]) -> str | None:
        """The node to pin the stage to, counted busy until :meth:`done`; None: leave it to Swarm."""
        cpus, memory = limits
        fit = []
        for node in self._manager.client.api.nodes():
            verdicts = [constraint_holds(node, c) for c in spec.placement]
            if None in verdicts:
                return None  # a constraint pipekit does not evaluate: Swarm places it
            if not all(verdicts) or not _usable(node, self._nodes.own_id) or node["ID"] in avoid:
                continue
            res = (node.get("Description") or {}).get("Resources") or {}
            if res.get("NanoCPUs", 0) >= cpus and res.get("MemoryBytes", 0) >= memory:
                fit.append((str(node["ID"]), 2 * max(1, res.get("NanoCPUs", 0) // 10**9)))
        if not fit:
            return None  # Swarm says why no node fits
        with self._lock:
            based = self._based.setdefault(spec.run_id, set())
            warm = [(self.busy[n], n) for n, most in fit if n in based and self.busy[n] < most]
            chosen = min(warm)[1] if warm else min((self.busy[n], n not in based, n) for n, _ in fit)[2]
            based.add(chosen)
            self.busy[chosen] += 1
        return chosen

    def done(self, node_id: str) -> None:
        with self._lock:
            self.busy[node_id] -= 1

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._based.pop(run_id, None)

    def view(self, engine: DockerBackend, spec: StageSpec, auth: Mapping[str, str] | None) -> tuple[Any, list[str]]:
        """The run's base on the node of ``engine`` (made now when there is none) and the stage's
        volumes there (its overlay view first, its upper second)."""
        assert spec.image is not None
        _ensure_image(engine, spec.image, auth)
        base = engine.layers.base_for(spec)
        volumes, _binds = engine.layers.stage_volumes(spec, base)
        return base, volumes


def view_mounts(volumes: list[str]) -> list[Any]:
    """The service's mounts of a stage's view (``volumes`` as :meth:`NodeLayers.view` made them)."""
    from docker.types import Mount

    from pipekit._backends.docker.engine import WORKDIR

    return [Mount(WORKDIR, volumes[0]), Mount(CHANGES_DIR, volumes[1], read_only=True)]


def _usable(node: Mapping[str, Any], own_id: str) -> bool:
    """A ready, active node whose engine pipekit reaches."""
    spec = node.get("Spec") or {}
    ready = (node.get("Status") or {}).get("State") == "ready" and spec.get("Availability") == "active"
    return ready and (ENGINE_LABEL in (spec.get("Labels") or {}) or node.get("ID") == own_id)


def _ensure_image(engine: DockerBackend, image: str, auth: Mapping[str, str] | None) -> None:
    """The stage's image on the node (its base is made by a container of it): pulled, with the run's
    registry login, when the node does not have it yet."""
    from docker.errors import ImageNotFound

    try:
        engine.client.api.inspect_image(image)
    except ImageNotFound:
        engine.client.api.pull(image, auth_config=dict(auth) if auth else None)
