"""The stage graph: an edge from each dependency to its dependent; validation and the plan."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from pipekit._core.util import gc_paused
from pipekit._dsl.matrix import combinations, instance_name
from pipekit._dsl.stage import Pipeline, Stage
from pipekit._plan.dag import Dag
from pipekit.exceptions import (
    CycleError,
    DuplicateStageError,
    PipelineError,
    StageSignatureError,
    UnknownStageError,
)

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["Plan", "find_errors", "plan"]

MAX_NAME = 120


def _nx() -> Any:
    """networkx, imported when a pipeline is first validated or planned (not by ``import pipekit``)."""
    import networkx

    return networkx


def _suggest(name: str, choices: Iterable[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _long_name(s: Stage) -> PipelineError:
    return PipelineError(
        f"Stage '{s.name[:40]}...' has a name {len(s.name)} characters long; keep stage names under"
        f" {MAX_NAME} characters (they name log files and containers)",
        stage=s.name[:40],
        location=s.location,
    )


def find_errors(pipeline: Pipeline) -> list[PipelineError]:
    """Every problem of the pipeline's definition, in the order of its stages; empty when valid."""
    errors: list[PipelineError] = []
    by_name: dict[str, Stage] = {}
    for s in pipeline.stages:
        if s.name in by_name:
            first = by_name[s.name]
            errors.append(
                DuplicateStageError(
                    f"Stage '{s.name}' is defined twice: first at {first.location}. Rename one of"
                    " them (or give it name=...)",
                    stage=s.name,
                    location=s.location,
                )
            )
        else:
            by_name[s.name] = s
    if not by_name:
        errors.append(
            PipelineError(
                f"{pipeline.path or pipeline.name} defines no stages. Decorate a function with @pk.stage to make one"
            )
        )
        return errors
    errors += [_long_name(s) for s in by_name.values() if len(s.name) > MAX_NAME]
    for s in by_name.values():
        for p in s.parameters:
            if p.is_context or p.has_default or p.name in by_name:
                continue
            suggestion = _suggest(p.name, by_name)
            hint = f" Did you mean '{suggestion}'?" if suggestion else ""
            errors.append(
                StageSignatureError(
                    f"Stage '{s.name}' takes a parameter '{p.name}' that is neither `ctx` nor a"
                    f" stage.{hint} Parameters after ctx name the stages whose results the stage"
                    " receives",
                    stage=s.name,
                    location=s.location,
                )
            )
        for need in (*s.needs, *([s.image_from] if s.image_from else []), *s.service_images):
            if need not in by_name:
                errors.append(
                    UnknownStageError(
                        f"Stage '{s.name}' depends on '{need}', which is not defined.",
                        name=need,
                        suggestion=_suggest(need, by_name),
                        stage=s.name,
                        location=s.location,
                    )
                )
            elif need == s.name:
                errors.append(CycleError([s.name], location=s.location))
    if not errors:
        graph = _build(by_name.values())
        position = {name: i for i, name in enumerate(by_name)}
        _, on_cycles = graph.order(position)
        for cycle in _cycles(graph.to_networkx()) if on_cycles else []:
            errors.append(CycleError(cycle, location=by_name[cycle[0]].location))
    return errors


def _build(stages: Iterable[Stage], groups: Mapping[str, Sequence[str]] | None = None) -> Dag:
    stages = list(stages)
    groups = groups or {}
    names = {s.name for s in stages}
    edges = (
        (node, s.name)
        for s in stages
        for dep in s.upstream
        for node in groups.get(dep, (dep,))
        if node in names and node != s.name
    )
    return Dag({s.name: s for s in stages}, edges)


def expand(pipeline: Pipeline) -> tuple[list[Stage], dict[str, tuple[str, ...]]]:
    """The pipeline's stages with each matrix stage replaced by its instances, and the groups."""
    out: list[Stage] = []
    groups: dict[str, tuple[str, ...]] = {}
    for s in pipeline.stages:
        if s.matrix is None:
            out.append(s)
            continue
        names = []
        for combo in combinations(s.matrix, s.exclude, s.include):
            image = s.image
            if image:
                try:
                    image = image.format(**combo)
                except (KeyError, IndexError, ValueError) as e:
                    raise PipelineError(
                        f"Stage '{s.name}': image '{s.image}' names {e}, which is not a matrix key"
                        f" ({', '.join(s.matrix)})",
                        stage=s.name,
                        location=s.location,
                    ) from None
            instance = attrs.evolve(
                s, name=instance_name(s.name, combo), image=image, group=s.name, matrix_values=combo, matrix=None
            )
            out.append(instance)
            names.append(instance.name)
        groups[s.name] = tuple(names)
    return out, groups


def _cycles(graph: nx.DiGraph) -> list[list[str]]:
    """One cycle per strongly connected component that has one, each starting at its first stage."""
    nx = _nx()
    order = {n: i for i, n in enumerate(graph.nodes)}
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        start = min(component, key=order.__getitem__)
        edges = nx.find_cycle(graph.subgraph(component), source=start)
        cycles.append([u for u, _ in edges])
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


@attrs.frozen
class Plan:
    """The stages to run, in an order that respects every dependency, and their graph.

    Matrix stages appear as their instances (``test[python=3.11]``); ``groups`` maps a matrix
    stage's name to its instances.
    """

    pipeline: Pipeline
    dag: Dag = attrs.field(eq=False, repr=False)
    order: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    @property
    def graph(self) -> nx.DiGraph:
        """The plan as a networkx ``DiGraph`` (made when asked: a run does not need networkx)."""
        return self.dag.to_networkx()

    def stage(self, name: str) -> Stage:
        s: Stage = self.dag.nodes[name]
        return s

    def upstream(self, name: str) -> tuple[str, ...]:
        """The stages that must finish before ``name`` starts."""
        return tuple(self.dag.predecessors(name))

    def dependents(self, name: str) -> tuple[str, ...]:
        """The stages that wait for ``name`` directly."""
        return tuple(self.dag.successors(name))

    def downstream(self, name: str) -> set[str]:
        """Every stage that depends on ``name``, directly or not."""
        return self.dag.descendants(name)


def plan(pipeline: Pipeline, targets: Sequence[str] = (), *, validated: bool = False) -> Plan:
    """Validate the pipeline and plan a run of ``targets`` and everything upstream of them.

    A target may name a stage, a matrix stage (all its instances) or one instance.
    Raises the first :class:`PipelineError` found; :func:`find_errors` lists them all
    (``validated=True`` when the caller has just checked that list is empty).
    """
    with gc_paused():
        return _plan(pipeline, targets, validated)


def _plan(pipeline: Pipeline, targets: Sequence[str], validated: bool) -> Plan:
    errors = [] if validated else find_errors(pipeline)
    if errors:
        raise errors[0]
    stages, groups = expand(pipeline)
    graph = _build(stages, groups)
    if targets:
        selected: set[str] = set()
        for t in targets:
            nodes = groups.get(t, (t,))
            for node in nodes:
                if node not in graph:
                    raise UnknownStageError(
                        f"There is no stage '{t}' in {pipeline.path or pipeline.name}.",
                        name=t,
                        suggestion=_suggest(t, [*graph, *groups]),
                    )
                selected.add(node)
                selected |= graph.ancestors(node)
        graph = graph.subgraph(selected)
    order, _ = graph.order({s.name: i for i, s in enumerate(stages)})
    kept = {g: tuple(n for n in names if n in graph) for g, names in groups.items()}
    return Plan(pipeline=pipeline, dag=graph, order=tuple(order), groups={g: n for g, n in kept.items() if n})
