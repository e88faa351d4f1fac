"""Output in the CI a run is in, and the run as a JUnit file."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._ci.output import GroupedRenderer, JenkinsRenderer, detect, gh_data, gh_property
from pipekit._cli.main import main
from pipekit.testing import FakeBackend

ESC = "\x1b"


@pytest.mark.parametrize(
    ("environ", "ci"),
    [
        ({"GITHUB_ACTIONS": "true", "CI": "true"}, "github"),
        ({"GITLAB_CI": "true", "CI": "true"}, "gitlab"),
        ({"JENKINS_URL": "https://ci.example.com/"}, "jenkins"),
        ({"CI": "true"}, "none"),
        ({}, "none"),
    ],
)
def test_the_ci_is_detected_from_the_variables_it_sets(environ: dict[str, str], ci: str) -> None:
    assert detect(environ) == ci


def test_workflow_command_values_are_escaped_as_the_runner_expects() -> None:
    assert gh_data("100% done\r\nnext") == "100%25 done%0D%0Anext"
    assert gh_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def _events(renderer: Any, events: list[dict[str, Any]]) -> str:
    out = []
    for ed in events:
        text = renderer(None, "info", dict(ed))
        if text:
            out.append(text)
    return "\n".join(out)


STAGE_EVENTS = [
    {"event": "stage started", "stage": "build", "status": "running", "image": "busybox"},
    {"event": "stage started", "stage": "test", "status": "running", "image": "busybox"},
    {"event": "command", "stage": "build", "command": "make"},
    {"event": "output", "stage": "test", "line": "collected 2 items"},
    {"event": "output", "stage": "build", "line": "cc -o app"},
    {"event": "stage finished", "stage": "build", "status": "succeeded", "duration_s": 1.5},
    {
        "event": "stage finished",
        "stage": "test",
        "status": "failed",
        "duration_s": 2.25,
        "error": "Command `pytest` exited with code 1\nlast lines...",
    },
]


def test_github_groups_each_stages_log_and_annotates_a_failure_at_its_line() -> None:
    renderer = GroupedRenderer("github", {"test": "/src/app/pipeline.py:12"}, clock=lambda: 1700000000)
    assert _events(renderer, STAGE_EVENTS).split("\n") == [
        "build        | > started (busybox)",
        "test         | > started (busybox)",
        "::group::build        | = ok in 1.50s",
        "$ make",
        "cc -o app",
        "::endgroup::",
        "::group::test         | = FAILED in 2.25s",
        "collected 2 items",
        "::endgroup::",
        "test         |   Command `pytest` exited with code 1",
        "test         |   last lines...",
        "::error file=/src/app/pipeline.py,line=12,title=pipekit%3A stage test failed::Command `pytest` exited with"
        " code 1",
    ]


def test_gitlab_puts_each_stage_in_a_collapsible_section_open_when_it_failed() -> None:
    renderer = GroupedRenderer("gitlab", {}, clock=lambda: 1700000000)
    out = _events(renderer, STAGE_EVENTS)
    assert out.split("\n")[2:6] == [
        f"{ESC}[0Ksection_start:1700000000:pipekit_build[collapsed=true]\r{ESC}[0Kbuild        | = ok in 1.50s",
        "$ make",
        "cc -o app",
        f"{ESC}[0Ksection_end:1700000000:pipekit_build\r{ESC}[0K",
    ]
    assert f"{ESC}[0Ksection_start:1700000000:pipekit_test\r{ESC}[0Ktest         | = FAILED in 2.25s" in out


def test_jenkins_prints_plain_lines_with_the_stage_in_brackets() -> None:
    renderer = JenkinsRenderer()
    out = _events(renderer, STAGE_EVENTS[:5])
    assert out.split("\n") == [
        "[build] > started (busybox)",
        "[test] > started (busybox)",
        "[build] $ make",
        "[test] collected 2 items",
        "[build] cc -o app",
    ]


JUNIT = (
    '<testsuite name="unit" tests="3"><testcase classname="t" name="ok" time="0.5"/>'
    '<testcase classname="t" name="bad"><failure message="assert 1 == 2">trace</failure></testcase>'
    '<testcase classname="t" name="later"><skipped message="not today"/></testcase></testsuite>'
)


def _pipeline(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(
        "import pipekit as pk\n\n"
        "@pk.stage(image='busybox')\n"
        "def build(ctx):\n"
        "    ctx.sh('make')\n"
        "    token = ctx.secret('API_TOKEN')\n"
        "    ctx.sh(f'echo {token}')\n\n"
        "@pk.stage(image='busybox')\n"
        "def test(ctx, build):\n"
        "    ctx.sh('pytest --junitxml=reports/junit.xml', check=False)\n"
        "    ctx.junit('reports/*.xml', fail_on_failure=False)\n"
        "    raise RuntimeError('boom')\n\n"
        "@pk.stage(image='busybox')\n"
        "def deploy(ctx, test):\n"
        "    pass\n"
    )
    return tmp_path / "pipeline.py"


def _run(path: Path, ci: str, **options: Any) -> tuple[Any, str]:
    backend = FakeBackend()
    backend.respond("echo *", stdout="the token is s3cr3t-token-value\n")
    backend.respond("pytest *", files={"reports/junit.xml": JUNIT})
    out = io.StringIO()
    result = pk.run(path, backend=backend, ci=ci, log_file=out, secrets={"API_TOKEN": "s3cr3t-token-value"}, **options)
    return result, out.getvalue()


def test_github_registers_secrets_before_anything_prints_them(tmp_path: Path) -> None:
    result, out = _run(_pipeline(tmp_path), "github")
    assert result.status == "failed"
    lines = out.splitlines()
    mask = lines.index("::add-mask::s3cr3t-token-value")
    assert mask < next(i for i, line in enumerate(lines) if "the token is" in line)
    assert "the token is ***" in out
    assert "s3cr3t-token-value" not in out.replace("::add-mask::s3cr3t-token-value", "")
    error = next(line for line in lines if line.startswith("::error "))
    assert error.startswith(f"::error file={gh_property(str(tmp_path / 'pipeline.py'))},line=9,")
    assert error.endswith("::Stage 'test' raised RuntimeError: boom")
    assert "::group::deploy       | = skipped (upstream 'test' failed)" not in lines  # nothing to group
    assert "deploy       | = skipped (upstream 'test' failed)" in lines


def test_github_appends_a_markdown_summary_to_the_step_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    _run(_pipeline(tmp_path), "github")
    text = summary.read_text()
    assert text.startswith("earlier step\n### pipekit: ")
    assert "| build | ✅ succeeded |" in text and "| test | ❌ failed |" in text
    assert "| deploy | ⚪ skipped (upstream 'test' failed) |" in text
    assert "- `test`: 3 tests: 1 passed, 1 failed, 0 errors, 1 skipped" in text
    assert "❌ `t.bad`: assert 1 == 2" in text


def test_the_junit_file_has_a_case_per_stage_and_the_tests_the_stages_read(tmp_path: Path) -> None:
    from junitparser import Error, Failure, JUnitXml, Skipped

    target = tmp_path / "out" / "pipekit.xml"
    result, _ = _run(_pipeline(tmp_path), "none", junit=str(target))
    xml = JUnitXml.fromfile(str(target))
    suites = {suite.name: suite for suite in xml}
    assert set(suites) == {f"pipekit: {result.pipeline}", "test: unit"}
    stages = {case.name: case for case in suites[f"pipekit: {result.pipeline}"]}
    assert list(stages) == ["build", "test", "deploy"]
    assert stages["build"].is_passed
    (failure,) = stages["test"].result
    assert isinstance(failure, Failure) and "boom" in failure.message
    (skipped,) = stages["deploy"].result
    assert isinstance(skipped, Skipped) and skipped.message == "upstream 'test' failed"
    tests = {case.name: case for case in suites["test: unit"]}
    assert tests["ok"].is_passed and tests["ok"].time == 0.5
    assert isinstance(tests["bad"].result[0], Failure) and not isinstance(tests["bad"].result[0], Error)
    assert isinstance(tests["later"].result[0], Skipped)
    assert suites["test: unit"].tests == 3 and suites["test: unit"].failures == 1
    assert xml.tests == 6 and xml.failures == 2 and xml.skipped == 2
    assert "s3cr3t-token-value" not in target.read_text()


def test_the_cli_detects_the_ci_and_takes_junit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n@pk.stage\ndef hello(ctx):\n    ctx.sh('echo hi')\n")
    monkeypatch.setenv("JENKINS_URL", "https://jenkins.example.com/")
    out, err = io.StringIO(), io.StringIO()
    code = main(["run", "-f", str(tmp_path), "--junit", str(tmp_path / "j.xml")], out=out, err=err)
    assert code == 0, err.getvalue()
    assert "[hello] hi" in out.getvalue().splitlines()
    assert '<testcase classname="pipekit.' in (tmp_path / "j.xml").read_text()
    out = io.StringIO()
    assert main(["run", "-f", str(tmp_path), "--ci", "none"], out=out, err=err) == 0
    assert re.search(r"^hello +\| hi$", out.getvalue(), re.M)
