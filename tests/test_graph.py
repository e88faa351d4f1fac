"""Validation and planning of the stage graph."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipekit as pk
from pipekit._dsl.stage import Parameter, Stage

PIPELINES = Path(__file__).parent / "pipelines"
ROOT = Path(__file__).parent.parent


def _errors(name: str) -> list[pk.PipelineError]:
    return pk.find_errors(pk.load(PIPELINES / name))


def test_cycle_lists_the_cycle_and_where() -> None:
    """A cycle is reported as a -> b -> a with the first stage's file:line."""
    [error] = _errors("cycle.py")
    assert isinstance(error, pk.CycleError)
    assert "a -> b -> a" in str(error)
    assert f"{PIPELINES / 'cycle.py'}:4" in str(error)
    assert error.exit_code == 2


def test_self_dependency_is_a_cycle() -> None:
    """A stage that needs itself is a cycle of one."""
    p = pk.Pipeline()

    @p.stage(needs=["loop"])
    def loop(ctx):
        pass

    [error] = pk.find_errors(p)
    assert isinstance(error, pk.CycleError)
    assert "loop -> loop" in str(error)


def test_unknown_dependency_suggests_a_name() -> None:
    """needs= on an undefined stage names both stages, suggests the close one and gives file:line."""
    [error] = _errors("unknown_dep.py")
    assert isinstance(error, pk.UnknownStageError)
    assert str(error).startswith("Stage 'test' depends on 'lnt', which is not defined. Did you mean 'lint'?")
    assert "unknown_dep.py:9" in str(error)


def test_duplicate_name_points_at_both_definitions() -> None:
    """Two stages named alike: the message names the first's location, the error the second's."""
    [error] = _errors("duplicate.py")
    assert isinstance(error, pk.DuplicateStageError)
    assert "Stage 'build' is defined twice: first at" in str(error)
    assert "duplicate.py:4" in str(error)
    assert "duplicate.py:9" in str(error)


def test_parameter_that_is_not_a_stage() -> None:
    """A parameter that is neither ctx nor a stage is named, with a suggestion."""
    [error] = _errors("bad_param.py")
    assert isinstance(error, pk.StageSignatureError)
    assert "Stage 'package' takes a parameter 'versoin' that is neither `ctx` nor a stage" in str(error)
    assert "Did you mean 'version'?" in str(error)
    assert "bad_param.py:9" in str(error)


def test_every_problem_is_listed() -> None:
    """find_errors returns all problems, not just the first."""
    errors = _errors("multi_error.py")
    assert {type(e) for e in errors} == {pk.StageSignatureError, pk.UnknownStageError}


def test_empty_pipeline_is_an_error() -> None:
    """A pipeline without stages says how to make one."""
    [error] = pk.find_errors(pk.Pipeline(name="empty"))
    assert "defines no stages" in str(error)


def test_plan_raises_the_first_error() -> None:
    """plan() refuses an invalid pipeline."""
    with pytest.raises(pk.CycleError):
        pk.plan(pk.load(PIPELINES / "cycle.py"))


def test_plan_of_named_stages_includes_everything_upstream() -> None:
    """Naming a stage plans it and its ancestors, nothing else."""
    p = pk.load(ROOT / "examples" / "hello")
    assert pk.plan(p, ["package"]).order == ("lint", "version", "package")
    assert pk.plan(p, ["version"]).order == ("version",)


def test_plan_of_unknown_stage() -> None:
    """Naming a stage that does not exist suggests the close one."""
    p = pk.load(ROOT / "examples" / "hello")
    with pytest.raises(pk.UnknownStageError, match="There is no stage 'pakage'.*Did you mean 'package'"):
        pk.plan(p, ["pakage"])


def test_needs_and_parameters_both_make_edges() -> None:
    """needs= orders, a parameter orders and passes a value: both are edges of the graph."""
    p = pk.load(ROOT / "examples" / "hello")
    graph = pk.plan(p).graph
    assert isinstance(graph, nx.DiGraph)
    assert set(graph.edges) == {("lint", "package"), ("version", "package")}


def _noop(**kwargs: object) -> None:
    return None


def _pipeline_from_edges(n: int, edges: list[tuple[int, int]]) -> pk.Pipeline:
    deps: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges:
        deps[b].add(a)
    stages = [
        Stage(
            fn=_noop,
            name=f"s{i}",
            parameters=tuple(Parameter(f"s{d}", False, False) for d in sorted(deps[i])),
            location=f"gen.py:{i}",
        )
        for i in range(n)
    ]
    return pk.Pipeline(name="generated", stages=stages)


edge_lists = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=30),
    )
)


@settings(max_examples=150, deadline=None)
@given(edge_lists)
def test_every_plan_respects_every_edge(data: tuple[int, list[tuple[int, int]]]) -> None:
    """For acyclic graphs the plan orders every dependency before its dependent."""
    n, edges = data
    forward = [(a, b) for a, b in edges if a < b]  # always acyclic
    order = pk.plan(_pipeline_from_edges(n, forward)).order
    index = {name: i for i, name in enumerate(order)}
    assert len(order) == n
    for a, b in forward:
        assert index[f"s{a}"] < index[f"s{b}"]


@settings(max_examples=150, deadline=None)
@given(edge_lists)
def test_every_cycle_is_reported(data: tuple[int, list[tuple[int, int]]]) -> None:
    """A graph has a cycle exactly when validation reports one, and each reported cycle is real."""
    n, edges = data
    edges = [(a, b) for a, b in edges if a != b]
    p = _pipeline_from_edges(n, edges)
    graph = nx.DiGraph(edges)
    errors = [e for e in pk.find_errors(p) if isinstance(e, pk.CycleError)]
    assert bool(errors) == (not nx.is_directed_acyclic_graph(graph) if edges else False)
    cyclic_components = [c for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert len(errors) == len(cyclic_components)
    for e in errors:
        names = [int(s[1:]) for s in e.cycle]
        for a, b in zip(names, names[1:] + names[:1], strict=True):
            assert (a, b) in edges


@pytest.mark.parametrize("seed", range(20))
def test_the_plans_order_is_networkx_lexicographical_topological_sort(seed: int) -> None:
    """The run's own graph code orders stages exactly as networkx does, on random DAGs."""
    import random

    rng = random.Random(seed)
    n = rng.randint(2, 40)
    edges = sorted({(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(0, 3 * n))})
    edges = [(u, v) for u, v in edges if u < v]
    order = list(range(n))
    rng.shuffle(order)  # definition order differs from the edge direction
    p = pk.Pipeline(name="random")
    for i in order:
        p.stage(name=f"s{i}", needs=[f"s{u}" for u, v in edges if v == i])(lambda ctx: None)
    plan = pk.plan(p)
    position = {f"s{i}": k for k, i in enumerate(order)}
    expected = list(nx.lexicographical_topological_sort(plan.graph, key=position.__getitem__))
    assert list(plan.order) == expected
    for name in plan.order:
        assert plan.downstream(name) == nx.descendants(plan.graph, name)
        assert set(plan.upstream(name)) == set(plan.graph.predecessors(name))
