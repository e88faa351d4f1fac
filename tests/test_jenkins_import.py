"""`pipekit import jenkinsfile`: each Jenkinsfile in tests/jenkinsfiles converted, validated, run."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._cli import main
from pipekit._graph import find_errors
from pipekit._jenkins import convert
from pipekit._jenkins_lex import tokenize
from pipekit._jenkins_parse import Call, GString, ParseError, Raw, parse
from pipekit.testing import FakeBackend, PipelineRunner

FILES = Path(__file__).parent / "jenkinsfiles"
ALL = sorted(FILES.glob("*.Jenkinsfile"))
NEEDS_HANDS = {"11-needs-hands"}
#: what the run of each converted file must leave in the workspace (None: not run on the engine)
RUNS: dict[str, str | None] = {
    "01-hello": "hello.txt",
    "02-sequence": "out/app.txt",
    "03-multiline": "lines.txt",
    "04-params-env": "build/greeting.txt",
    "05-parallel": None,
    "07-post": None,
    "08-credentials": None,
    "09-dir-stash": "sub/where.txt",
}


def _convert(path: Path, folder: Path) -> tuple[Path, Any]:
    result = convert(path.read_text(), path.stem)
    target = folder / "pipeline.py"
    target.write_text(result.text)
    return target, result


def test_there_are_at_least_ten_jenkinsfiles() -> None:
    assert len(ALL) >= 10


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_each_jenkinsfile_converts_to_a_valid_formatted_pipeline(path: Path, tmp_path: Path) -> None:
    target, result = _convert(path, tmp_path)
    assert bool(result.todos) == (path.stem in NEEDS_HANDS), result.todos
    assert find_errors(pk.load(target)) == []
    check = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--line-length", "100", str(target)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for line, _ in result.todos:
        assert f"# TODO(Jenkinsfile:{line}):" in result.text


@pytest.mark.parametrize("name", sorted(n for n, f in RUNS.items()), ids=sorted(RUNS))
def test_converted_pipelines_run_on_the_engine(name: str, tmp_path: Path, run_on_docker: Any) -> None:
    target, _ = _convert(FILES / f"{name}.Jenkinsfile", tmp_path)
    secrets = {"API_TOKEN": "token-for-the-test", "REGISTRY_LOGIN_USR": "me", "REGISTRY_LOGIN_PSW": "pw-for-the-test"}
    result, events = run_on_docker(target, secrets=secrets)
    assert result.status == "succeeded", result.stages
    if RUNS[name]:
        assert (tmp_path / RUNS[name]).is_file()


def test_the_order_of_stages_becomes_needs_and_parallel_stages_share_them(tmp_path: Path) -> None:
    target, _ = _convert(FILES / "05-parallel.Jenkinsfile", tmp_path)
    plan = pk.plan(pk.load(target))
    assert set(plan.upstream("unit")) == set(plan.upstream("lint")) == set(plan.upstream("docs")) == {"prepare"}
    assert set(plan.upstream("report")) == {"unit", "lint", "docs"}


def test_parameters_environment_and_conditions_become_their_pipekit_forms(tmp_path: Path) -> None:
    target, result = _convert(FILES / "04-params-env.Jenkinsfile", tmp_path)
    text = result.text
    assert 'pk.param("GREETING", default="hello", help="what to say")' in text
    assert 'pk.param("LOUD", default=False' in text
    assert 'pk.param("TARGET", default="staging", help="where to deploy (one of: staging, production)")' in text
    assert 'f"mkdir -p ${{OUT_DIR}} && echo {ctx.params.GREETING} ${{APP}} > ${{OUT_DIR}}/greeting.txt"' in text
    _, when = _convert(FILES / "06-when.Jenkinsfile", tmp_path)
    assert 'when=pk.branch("main")' in when.text
    assert 'when=~pk.branch("release/*")' in when.text
    assert 'pk.env("FORCE_DEPLOY", "yes") | pk.branch("main") & pk.param_is("DEPLOY", True)' in when.text
    run = PipelineRunner().run(pk.load(tmp_path / "pipeline.py"), branch="release/1.0")
    assert run.stages["not_a_release"].status == "skipped" and run.stages["main_only"].status == "skipped"
    assert run.stages["build"].status == "succeeded"


def test_docker_build_and_push_in_a_script_block_become_ctx_docker(tmp_path: Path) -> None:
    target, result = _convert(FILES / "10-docker-build.Jenkinsfile", tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    runner = PipelineRunner(backend=FakeBackend())
    run = runner.run(pk.load(target), secrets={"REGISTRY_CREDS_USR": "u", "REGISTRY_CREDS_PSW": "p"})
    assert run.status == "succeeded", run.stages
    assert run.built == [f"myorg/app:{run.run.run_id}"]
    assert run.pushed == [f"registry.example.com/myorg/app:{run.run.run_id}", "registry.example.com/myorg/app:latest"]


def test_what_cannot_be_converted_is_kept_as_a_comment_at_its_line_and_listed(tmp_path: Path) -> None:
    path = FILES / "11-needs-hands.Jenkinsfile"
    out, err = io.StringIO(), io.StringIO()
    code = main(["import", "jenkinsfile", str(path), "-o", str(tmp_path / "pipeline.py")], out=out, err=err)
    assert code == 1
    listed = err.getvalue()
    for line in (3, 4, 9, 11, 12, 18, 20):
        assert f"line {line}: " in listed
    text = (tmp_path / "pipeline.py").read_text()
    assert "#     input message: 'Deploy?', ok: 'Yes'" in text
    assert "# TODO(Jenkinsfile:18): a Groovy `when { expression }`: write it as a pk condition:" in text
    assert "#     expression { currentBuild.previousBuild == null }" in text
    assert main(["import", "jenkinsfile", str(path), "-o", str(tmp_path / "pipeline.py")], out=out, err=err) == 2
    assert "--force" in err.getvalue()


def test_the_parser_reads_strings_comments_and_nested_blocks() -> None:
    tree = parse(
        "// leading comment\n"
        "pipeline { /* a\n block comment */\n"
        '  stages { stage("It\'s") { steps {\n'
        '    sh "echo \\"quoted\\" ${env.A} $B \'single\'"\n'
        "    sh '''\n      line one\n      it's two\n    '''\n"
        "    weird code here ++\n"
        "  } } }\n"
        "}\n"
    )
    stage = tree.block[0].block[0]  # type: ignore[index,union-attr]
    assert isinstance(stage, Call) and stage.args == ("It's",)
    steps = stage.block[0].block  # type: ignore[index,union-attr]
    first = steps[0].args[0]
    assert isinstance(first, GString)
    assert first.parts == (
        ("text", 'echo "quoted" '),
        ("expr", "env.A"),
        ("text", " "),
        ("expr", "B"),
        ("text", " 'single'"),
    )
    assert steps[1].args[0] == "\n      line one\n      it's two\n    "
    assert isinstance(steps[2], Raw) and steps[2].line == 10
    assert [t.line for t in tokenize("a\n'''x\ny'''\nb") if t.kind == "name"] == [1, 4]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("node { sh 'x' }", "no `pipeline { ... }` block"),
        ("pipeline {\n  stages {\n    stage('a') {\n", "line 4: a block is not closed"),
        ("pipeline { agent any }", "no `stages` block"),
    ],
)
def test_a_jenkinsfile_that_cannot_be_read_is_refused_with_its_line(source: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        convert(source)


def test_the_example_in_the_docs_is_what_the_importer_writes() -> None:
    page = (Path(__file__).parent.parent / "docs" / "from-jenkins.md").read_text()
    groovy = page.split("```groovy\n")[1].split("```")[0]
    python = page.split("becomes\n\n```python\n")[1].split("```")[0]
    written = convert(groovy, "app").text
    assert written.split("\n", 2)[2] == python  # after the docstring and its blank line
