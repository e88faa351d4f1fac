"""Pipeline parameters: declared with pk.param, set with --param, read as ctx.params."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._cli.main import main
from pipekit._dsl.params import resolve_params

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


def _console(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    """The installed `pipekit` console script in a process of its own (importing this checkout),
    without the PIPEKIT_* and CI variables of the environment the tests run in."""
    import os

    from helpers import run_console

    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPEKIT_") and k not in ("CI", "GITHUB_ACTIONS")}
    return run_console(argv, cwd=cwd, env={**base, **(env or {})}, timeout=600)


def test_a_short_secret_is_warned_about_in_the_run_log_and_a_value_declared_not_secret_is_not(
    tmp_path: Path, busybox_image: str
) -> None:
    """The warning about a secret too short to mask comes after the run's first line, in its log's
    format, once; ``pk.secret(NAME, mask=False)`` is read the same way, shown as it is, never warned about."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        f"@pk.stage(image={busybox_image!r}, env={{'PIN': pk.secret('SHORT_PIN'),"
        " 'WHO': pk.secret('DEPLOY_USER', mask=False), 'WHO2': pk.secret('TINY_USER', mask=False)})\n"
        "def deploy(ctx):\n    ctx.sh('echo user=$WHO/$WHO2 pin=$PIN')\n\n"
        f"@pk.stage(image={busybox_image!r}, env={{'PIN': pk.secret('SHORT_PIN')}}, needs=[deploy])\n"
        "def again(ctx):\n    ctx.sh('echo again')\n"
    )
    env = {"SHORT_PIN": "42", "DEPLOY_USER": "deploy-bot", "TINY_USER": "ci"}
    done = _console(["run", "--progress", "plain"], tmp_path, env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pipekit: running "), done.stdout  # the banner comes first
    warnings = [line for line in lines if "secret not masked" in line]
    assert len(warnings) == 1 and "secret=SHORT_PIN" in warnings[0] and warnings[0].startswith("[warning] ")
    assert "mask=False" in warnings[0]  # it says how to declare a value that is not secret
    assert "user=deploy-bot/ci pin=42" in done.stdout  # not masked: declared not secret, and too short
    assert "secret not masked" not in done.stderr
    as_json = _console(["run", "--log-format", "json"], tmp_path, env)
    events = [json.loads(line) for line in as_json.stdout.splitlines() if line.strip()]
    assert events[0]["event"] == "run started"
    assert [e["secret"] for e in events if e["event"] == "secret not masked"] == ["SHORT_PIN"]


def test_a_pipeline_made_in_code_declares_its_parameters_with_params() -> None:
    """``pk.Pipeline(params=[...])`` declares parameters without a module to collect them from:
    they are typed and defaulted, and an unknown --param is still refused."""
    from pipekit.testing import FakeBackend

    p = pk.Pipeline(params=[pk.param("who", default="world"), pk.param("times", default=1)])

    @p.stage
    def greet(ctx):
        return f"{ctx.params.who} x{ctx.params.times}"

    assert sorted(p.params) == ["times", "who"]
    result = pk.run(p, backend=FakeBackend(), params={"times": "3"}, log_file=io.StringIO())
    assert result.exit_code == 0
    assert result["greet"].output == "world x3"
    with pytest.raises(pk.ParameterError, match="no such parameter"):
        pk.run(p, backend=FakeBackend(), params={"whom": "x"}, log_file=io.StringIO())


def test_a_loaded_pipeline_keeps_its_params_and_takes_its_modules(tmp_path: Path) -> None:
    """A parameter named in params= and also held by the module is one declaration; the module's
    others join it."""
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\nWHO = pk.param('who', default='world')\nN = pk.param('n', default=2)\n"
        "pipeline = pk.Pipeline(params=[WHO, pk.param('mode', default='fast')])\n\n"
        "@pipeline.stage\ndef s(ctx):\n    pass\n"
    )
    assert sorted(pk.load(tmp_path / "pipeline.py").params) == ["mode", "n", "who"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("who", "params= takes a list of pk.param(...) values, got 'who'"),
        ([pk.param("who"), "mode"], "params= takes pk.param(...) values, got 'mode'"),
        ([pk.param("who"), pk.param("who", default=1)], "params= declares the parameter 'who' twice"),
    ],
)
def test_params_misuse_fails_when_the_pipeline_is_made(params: Any, message: str) -> None:
    with pytest.raises(pk.PipelineError, match=re.escape(message)):
        pk.Pipeline(params=params)
