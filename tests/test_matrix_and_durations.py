"""Matrix expansion and duration parsing, without an engine."""

from __future__ import annotations

import pytest

import pipekit as pk
from pipekit._dsl.control import format_duration, parse_duration
from pipekit._dsl.matrix import combinations


def test_product_of_the_matrix_in_key_order() -> None:
    """Every combination, first key varying slowest."""
    assert combinations({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


def test_exclude_removes_matching_combinations() -> None:
    """An exclude entry removes every combination it matches (partially given keys match any value)."""
    assert combinations({"a": [1, 2], "b": ["x", "y"]}, exclude=[{"a": 2}]) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}]


def test_include_extends_or_adds_like_github() -> None:
    """include adds keys to the combinations it matches, or adds a new combination when it matches none."""
    got = combinations({"os": ["linux", "mac"]}, include=[{"os": "linux", "experimental": True}, {"os": "windows"}])
    assert got == [{"os": "linux", "experimental": True}, {"os": "mac"}, {"os": "windows"}]


def test_bad_matrix_is_refused_at_decoration() -> None:
    """A matrix value that is not a non-empty list says so."""
    with pytest.raises(pk.PipelineError, match=r"matrix\['python'\] must be a non-empty list"):
        pk.stage(matrix={"python": "3.11"})(lambda ctx: None)


def test_image_template_must_use_matrix_keys() -> None:
    """image='python:{pyton}' with no such matrix key fails planning with the keys listed."""
    p = pk.Pipeline()

    @p.stage(image="python:{pyton}", matrix={"python": ["3.11"]})
    def test(ctx):
        pass

    with pytest.raises(pk.PipelineError, match="names 'pyton', which is not a matrix key \\(python\\)"):
        pk.plan(p)


@pytest.mark.parametrize(
    ("text", "seconds"), [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1h30m", 5400.0), ("2m30s", 150.0)]
)
def test_durations(text: object, seconds: float) -> None:
    """Seconds or h/m/s strings."""
    assert parse_duration(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["soon", "10x", "-5", 0, True])
def test_bad_durations(bad: object) -> None:
    """Anything else names what is accepted."""
    with pytest.raises(pk.PipelineError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_format_duration() -> None:
    """Durations print the way users write them."""
    assert [format_duration(s) for s in (1, 90, 600, 5400, 0.5)] == ["1s", "1m30s", "10m", "1h30m", "0.5s"]


def test_bad_stage_options_fail_at_decoration() -> None:
    """Wrong types for timeout, retries, services and resource fail when the stage is defined."""
    for options, message in [
        ({"timeout": "forever"}, "timeout takes seconds"),
        ({"retries": -1}, "retries= takes a whole number"),
        ({"services": ["postgres"]}, "services= takes pk.Service"),
        ({"resource": ""}, "resource= takes a name"),
    ]:
        with pytest.raises(pk.PipelineError, match=message):
            pk.stage(**options)(lambda ctx: None)
