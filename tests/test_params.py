"""Pipeline parameters: declared with pk.param, set with --param, read as ctx.params."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._cli import main
from pipekit._params import resolve_params

PIPELINE = """
import pipekit as pk

REGISTRY = pk.param("registry", default="localhost:5000", help="where to push")
DEPLOY = pk.param("deploy", default=False)
REPLICAS = pk.param("replicas", default=2)

@pk.stage
def show(ctx):
    return (ctx.params.registry, ctx.params.deploy, ctx.params["replicas"])
"""


def test_values_are_converted_to_the_default_type() -> None:
    """bool, int and str parameters take text from the command line."""
    declared = [pk.param("flag", default=False), pk.param("n", default=1), pk.param("name", default="x")]
    values = resolve_params(declared, {"flag": "yes", "n": "7"})
    assert (values.flag, values.n, values.name) == (True, 7, "x")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"replica": "3"}, "--param replica: no such parameter (declared: deploy, registry, replicas)"),
        ({"replicas": "many"}, "--param replicas='many': expected int"),
        ({"deploy": "maybe"}, "expected bool"),
    ],
)
def test_unknown_or_badly_typed(given: dict[str, str], message: str) -> None:
    """An unknown name or a value of the wrong type is a ParameterError (exit 2)."""
    declared = [pk.param("registry", default="r"), pk.param("deploy", default=False), pk.param("replicas", default=2)]
    with pytest.raises(pk.ParameterError) as info:
        resolve_params(declared, given)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_cli_rejects_unknown_param_with_exit_2(tmp_path: Path) -> None:
    """`pipekit run --param nope=1` exits 2 before anything runs."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    err = io.StringIO()
    assert main(["run", "-f", str(tmp_path), "--param", "nope=1"], out=io.StringIO(), err=err) == 2
    assert "no such parameter" in err.getvalue()


def test_list_shows_parameters(tmp_path: Path) -> None:
    """`pipekit list` prints each parameter with its type, default and help."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    out = io.StringIO()
    assert main(["list", "-f", str(tmp_path)], out=out) == 0
    rows = [line.split() for line in out.getvalue().splitlines()]
    assert ["PARAMETER", "TYPE", "DEFAULT", "HELP"] in rows
    assert ["registry", "str", "'localhost:5000'", "where", "to", "push"] in rows
    assert ["deploy", "bool", "False", "-"] in rows


@pytest.mark.docker
def test_stage_reads_params(tmp_path: Path, run_on_docker: Any) -> None:
    """ctx.params has the defaults overlaid with the given values."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    p = pk.load(tmp_path / "pipeline.py")
    result, _ = run_on_docker(p, params={"deploy": "true"})
    assert result["show"].output == ("localhost:5000", True, 2)
