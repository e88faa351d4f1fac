"""The stage graph a run works from: plain adjacency, in stage order.

networkx is pipekit's graph library (``Plan.graph`` is a networkx ``DiGraph``, and a cycle is
explained by networkx's search), but a run only needs what this module does in a few lines:
the dependencies of a stage, its dependents, the stages upstream or downstream of it, and one
order. Importing networkx costs 150 ms and 12 MiB here, more than half of what pipekit adds to
a run's start and memory; so a valid pipeline is planned and run without it.

The order is the same as networkx's ``lexicographical_topological_sort`` keyed by the stages'
positions (``tests/test_graph.py`` checks it on random graphs).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Dag"]


class Dag:
    """Nodes (stage names, with a value each) and edges from each dependency to its dependent."""

    def __init__(self, nodes: Mapping[str, Any], edges: Iterable[tuple[str, str]]) -> None:
        self.nodes: dict[str, Any] = dict(nodes)
        self._preds: dict[str, list[str]] = {n: [] for n in self.nodes}
        self._succs: dict[str, list[str]] = {n: [] for n in self.nodes}
        seen: set[tuple[str, str]] = set()
        for u, v in edges:
            if (u, v) not in seen:
                seen.add((u, v))
                self._preds[v].append(u)
                self._succs[u].append(v)

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __iter__(self) -> Any:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(u, v) for u, children in self._succs.items() for v in children]

    def predecessors(self, name: str) -> list[str]:
        return self._preds[name]

    def successors(self, name: str) -> list[str]:
        return self._succs[name]

    def _reach(self, name: str, step: Mapping[str, list[str]]) -> set[str]:
        found: set[str] = set()
        todo = list(step[name])
        while todo:
            n = todo.pop()
            if n not in found:
                found.add(n)
                todo.extend(step[n])
        return found

    def ancestors(self, name: str) -> set[str]:
        return self._reach(name, self._preds)

    def descendants(self, name: str) -> set[str]:
        return self._reach(name, self._succs)

    def subgraph(self, names: set[str]) -> Dag:
        nodes = {n: v for n, v in self.nodes.items() if n in names}
        return Dag(nodes, ((u, v) for u, v in self.edges if u in names and v in names))

    def order(self, key: Mapping[str, int]) -> tuple[list[str], set[str]]:
        """A topological order, smallest ``key`` first among the stages that are free; and the
        stages left out because they are on or behind a cycle (empty for a DAG)."""
        waiting = {n: len(p) for n, p in self._preds.items()}
        free = [(key[n], n) for n, count in waiting.items() if count == 0]
        heapq.heapify(free)
        out: list[str] = []
        while free:
            _, n = heapq.heappop(free)
            out.append(n)
            for child in self._succs[n]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(free, (key[child], child))
        return out, set(self.nodes) - set(out)

    def layout(self, order: list[str] | tuple[str, ...]) -> dict[str, tuple[int, int]]:
        """Where each stage goes in a drawing: (column, row); the column is one more than the
        deepest stage it needs, rows fill each column in ``order`` (a topological order)."""
        depth: dict[str, int] = {}
        rows: dict[int, int] = {}
        out: dict[str, tuple[int, int]] = {}
        for n in order:
            depth[n] = 1 + max((depth.get(p, 0) for p in self._preds.get(n, ())), default=-1)
            out[n] = (depth[n], rows.get(depth[n], 0))
            rows[depth[n]] = out[n][1] + 1
        return out

    def to_networkx(self) -> Any:
        """The same graph as a networkx ``DiGraph`` (each node's value as its ``stage`` attribute)."""
        import networkx

        graph = networkx.DiGraph()
        graph.add_nodes_from((n, {"stage": v}) for n, v in self.nodes.items())
        graph.add_edges_from(self.edges)
        return graph
