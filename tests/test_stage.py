"""The DSL: what @pk.stage and pk.Pipeline make of a function."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

import pipekit as pk


def test_bare_decorator_makes_a_stage_named_after_the_function() -> None:
    """@pk.stage without options names the stage after the function and keeps it callable."""

    @pk.stage
    def lint(ctx):
        return "linted"

    assert isinstance(lint, pk.Stage)
    assert lint.name == "lint"
    assert lint.image is None
    assert lint(None) == "linted"
    assert lint.fn(None) == "linted"


def test_options_are_recorded() -> None:
    """image, needs (stages or names), env and name are kept on the stage."""

    @pk.stage
    def lint(ctx):
        pass

    @pk.stage(image="alpine:3.20", needs=[lint, "other"], env={"A": 1}, name="pkg")
    def package(ctx):
        pass

    assert package.name == "pkg"
    assert package.image == "alpine:3.20"
    assert package.needs == ("lint", "other")
    assert package.env == {"A": "1"}


def test_parameters_after_ctx_are_inputs() -> None:
    """A parameter that is not ctx names a stage whose value the stage receives."""

    @pk.stage
    def package(ctx, version, build=None):
        pass

    assert package.wants_context == "ctx"
    assert package.inputs == ("version",)
    assert package.optional_inputs == ("build",)


def test_context_found_by_annotation() -> None:
    """A first parameter annotated pk.Context is the context whatever its name."""

    @pk.stage
    def lint(c: pk.Context, version):
        pass

    assert lint.wants_context == "c"
    assert lint.inputs == ("version",)


def test_stage_without_context() -> None:
    """A stage function may take no context at all."""

    @pk.stage
    def constant():
        return 3

    assert constant.wants_context is None
    assert constant.inputs == ()


def test_variadic_parameters_are_refused_at_decoration() -> None:
    """*args cannot be filled by pipekit, so decorating such a function fails at once."""
    with pytest.raises(pk.StageSignatureError, match=r"Stage 'bad' takes \*args.*test_stage.py:\d+"):

        @pk.stage
        def bad(ctx, *args):
            pass


def test_needs_takes_only_stages_or_names() -> None:
    """needs= with a plain function says to decorate it or pass its name."""

    def helper():
        pass

    with pytest.raises(pk.PipelineError, match="needs= takes stages or stage names"):
        pk.stage(needs=[helper])(lambda ctx: None)


def test_decorating_twice_is_refused() -> None:
    """A stage cannot be decorated again."""

    @pk.stage
    def lint(ctx):
        pass

    with pytest.raises(pk.PipelineError, match="decorated as a stage twice"):
        pk.stage(lint)


def test_pipeline_gives_defaults() -> None:
    """pk.Pipeline's image and env are defaults that a stage's own options override."""
    p = pk.Pipeline(name="ci", image="base:1", env={"A": "p", "B": "p"})

    @p.stage
    def one(ctx):
        pass

    @p.stage(image="own:2", env={"B": "s"})
    def two(ctx):
        pass

    assert [s.name for s in p.stages] == ["one", "two"]
    assert p.image_for(one) == "base:1"
    assert p.image_for(two) == "own:2"
    assert p.env_for(two) == {"A": "p", "B": "s"}


def test_location_names_file_and_line() -> None:
    """Each stage knows where it was defined, for error messages."""

    @pk.stage
    def here(ctx):
        pass

    file, line = here.location.rsplit(":", 1)
    assert file == __file__
    assert int(line) > 0


# -- placement= (the Swarm backend's constraints) ---------------------------------------------


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ("node.labels.gpu==true", "placement= takes a list of constraints like ['node.labels.gpu==true']"),
        (["gpu"], "placement= takes constraints of the form 'node.labels.NAME==VALUE' (or !=), got 'gpu'"),
        ([1], "placement= takes a list of constraints"),
    ],
)
def test_placement_misuse_fails_at_decoration(placement: Any, message: str) -> None:
    with pytest.raises(pk.PipelineError, match=re.escape(message)):

        @pk.stage(image="busybox", placement=placement)
        def s(ctx):
            pass

    with pytest.raises(pk.PipelineError, match=re.escape(message)):
        pk.Pipeline(placement=placement)


def test_placement_reaches_the_backend_and_a_backend_that_does_not_place_says_it_ignores_it() -> None:
    """The pipeline's placement is every stage's default; a stage's own replaces it. The fake
    backend, like the Docker one, does not place stages: a debug line says so."""
    from pipekit.testing import FakeBackend

    seen: dict[str, tuple[str, ...]] = {}

    class Capturing(FakeBackend):
        def prepare(self, spec: Any) -> Any:
            seen[spec.stage] = spec.placement
            return super().prepare(spec)

    p = pk.Pipeline(image="busybox", placement=["node.role==worker"])

    @p.stage
    def default(ctx):
        pass

    @p.stage(placement=["node.labels.gpu==true", "node.hostname!=old"])
    def own(ctx):
        pass

    events: list[dict[str, Any]] = []

    def keep(_logger: Any, _name: str, event: Any) -> Any:
        events.append(dict(event))
        return event

    result = pk.run(p, backend=Capturing(), verbose=True, log_processors=[keep], log_file=io.StringIO())
    assert result.exit_code == 0
    assert seen == {"default": ("node.role==worker",), "own": ("node.labels.gpu==true", "node.hostname!=old")}
    ignored = [e for e in events if e["event"] == "placement ignored"]
    assert {e["stage"] for e in ignored} == {"default", "own"}
    assert not [e for e in events if e["event"] == "stage placed"]


# -- the option table: one definition of @pk.stage's options ----------------------------------


def _typed_options() -> list[tuple[str, str]]:
    """The fields of ``StageOptions``, the TypedDict the overloads of ``pk.stage`` and
    ``Pipeline.stage`` unpack, as written in pipekit/_dsl/stage.py: (name, type). Read from the
    source, as a type checker reads it."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(pk.__file__).parent / "_dsl" / "stage.py").read_text())
    (options,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "StageOptions"]
    return [
        (n.target.id, ast.unparse(n.annotation))
        for n in options.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    ]


def _unpacked(owner: str | None) -> str:
    """How the overload of ``stage`` that takes options (a method of ``owner``, or the module's
    function) declares them."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(pk.__file__).parent / "_dsl" / "stage.py").read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    scope = tree.body if owner is None else classes[owner].body
    (overload,) = [
        n
        for n in scope
        if isinstance(n, ast.FunctionDef)
        and n.name == "stage"
        and any(ast.unparse(d) == "overload" for d in n.decorator_list)
        and n.args.kwarg is not None
    ]
    assert overload.args.kwarg is not None and overload.args.kwarg.annotation is not None
    return ast.unparse(overload.args.kwarg.annotation)


def test_the_typed_options_are_the_option_table() -> None:
    """What mypy and IDEs read (``StageOptions``) is the table: names, types, order."""
    from pipekit._dsl.stage import STAGE_OPTIONS

    assert _typed_options() == [(o.name, o.type) for o in STAGE_OPTIONS]


@pytest.mark.parametrize("owner", [None, "Pipeline"], ids=["pk.stage", "Pipeline.stage"])
def test_both_overloads_take_the_typed_options(owner: str | None) -> None:
    assert _unpacked(owner) == "Unpack[StageOptions]"


def test_the_option_table_in_the_docs_is_the_table() -> None:
    """docs/dsl.md's option table is the one the table renders."""
    from pathlib import Path

    from pipekit._dsl.options import markdown_table
    from pipekit._dsl.stage import STAGE_OPTIONS

    text = (Path(__file__).parent.parent / "docs" / "dsl.md").read_text()
    start = text.index("| option | meaning |")
    assert text[start : text.index("\n\n", start) + 1] == markdown_table(STAGE_OPTIONS)


#: a value other than the default for every option, and what the stage keeps of it
_SAMPLES: dict[str, tuple[Any, str, Any]] = {
    "image": ("alpine:3.20", "image", "alpine:3.20"),
    "needs": (["lint"], "needs", ("lint",)),
    "env": ({"A": 1}, "env", {"A": "1"}),
    "name": ("renamed", "name", "renamed"),
    "dockerfile": ("Dockerfile", "dockerfile", "Dockerfile"),
    "post": ({"failure": print}, "post", {"failure": (print,)}),
    "timeout": ("1m30s", "timeout", 90.0),
    "retries": (2, "retries", 2),
    "backoff": (1, "backoff", 1.0),
    "allow_failure": (1, "allow_failure", True),
    "matrix": ({"py": ["3.11"]}, "matrix", {"py": ("3.11",)}),
    "exclude": ([{"py": "3.10"}], "exclude", ({"py": "3.10"},)),
    "include": ([{"py": "3.12"}], "include", ({"py": "3.12"},)),
    "services": ([pk.Service("db", "postgres:16")], "services", (pk.Service("db", "postgres:16"),)),
    "resource": ("deploy-lock", "resource", "deploy-lock"),
    "cache": (pk.inputs("src/"), "cache", pk.inputs("src/")),
    "cache_dirs": (["/root/.cache"], "cache_dirs", ("/root/.cache",)),
    "resources": (pk.Resources(cpus=1), "resources", pk.Resources(cpus=1)),
    "placement": (["node.role==worker"], "placement", ("node.role==worker",)),
    "workdir": ("frontend", "workdir", "frontend"),
    "workspace": (False, "workspace", False),
    "approval": (pk.Approval(message="Ship?"), "approval", pk.Approval(message="Ship?")),
    "environment": ("production", "environment", pk.Environment("production")),
}


def _option_names() -> list[str]:
    from pipekit._dsl.stage import STAGE_OPTIONS

    return [o.name for o in STAGE_OPTIONS]


@pytest.mark.parametrize("option", _option_names())
def test_every_option_of_the_table_reaches_the_stage(option: str) -> None:
    """Each option given to @pk.stage is checked and kept on the stage (a new option needs a sample here)."""
    if option == "when":
        condition = pk.branch("main")
        value, field, expected = condition, "when", condition
    else:
        value, field, expected = _SAMPLES[option]

    def build(ctx):
        pass

    made = pk.stage(**{option: value})(build)
    assert getattr(made, field) == expected
    assert getattr(made, field) != getattr(pk.stage(build), field)


@pytest.mark.parametrize("option", _option_names())
def test_a_misspelt_option_names_the_right_one(option: str) -> None:
    """The did-you-mean list is the table: a typo of any option names that option."""
    typo = option[:-1] + "x" + option[-1]
    with pytest.raises(pk.PipelineError, match=re.escape(f"has no option {typo}=. Did you mean {option}=?")):
        pk.stage(**{typo: None})(lambda ctx: None)
    with pytest.raises(pk.PipelineError, match=re.escape(f"has no option {typo}=. Did you mean {option}=?")):
        pk.Pipeline().stage(**{typo: None})(lambda ctx: None)


@pytest.mark.parametrize("option", [n for n in _option_names() if n not in ("image", "name")])
def test_a_stage_made_without_the_decorator_has_the_tables_defaults(option: str) -> None:
    """``pk.Stage``'s own defaults (for a stage made in code, or evolved) are the table's, checked."""

    def build(ctx):
        pass

    assert getattr(pk.Stage(fn=build, name="build"), option) == getattr(pk.stage(build), option)
