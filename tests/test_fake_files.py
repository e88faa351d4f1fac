"""Issue 22, item 11: ctx.junit trusts no stale report, and under the test runner ctx.junit and
ctx.archive read the files scripted commands write (``respond(files=...)``), never the real folder."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

import pipekit as pk
from pipekit.testing import PipelineRunner

FOUR_PASSED = "<testsuite>" + "".join(f'<testcase classname="t" name="ok{i}"/>' for i in range(4)) + "</testsuite>"
ONE_FAILED = (
    '<testsuite><testcase classname="t" name="ok"/>'
    '<testcase classname="t" name="broken"><failure message="assert 1 == 2"/></testcase></testsuite>'
)


def _tests_pipeline(command: str) -> pk.Pipeline:
    p = pk.Pipeline(name="tests")

    @p.stage(image="python:3.12")
    def test(ctx):
        ctx.sh(command, check=False)
        return ctx.junit("reports/junit.xml").summary()

    return p


@pytest.fixture
def stale_folder(tmp_path: Path) -> Path:
    """A project folder holding the report of an earlier run: 4 tests, all passed."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "junit.xml").write_text(FOUR_PASSED)
    return tmp_path


def test_junit_reads_the_report_the_command_wrote_not_the_real_folder(stale_folder: Path) -> None:
    runner = PipelineRunner(base_dir=stale_folder)
    runner.respond("pytest*", exit_code=1, files={"reports/junit.xml": ONE_FAILED})
    result = runner.run(_tests_pipeline("pytest --junitxml=reports/junit.xml"))
    assert result.stages["test"].status == "failed"
    assert "1 of 2 tests failed in stage 'test': t.broken" in (result.stages["test"].error or "")
    assert result.test_reports["test"].tests == 2
    assert (stale_folder / "reports" / "junit.xml").read_text() == FOUR_PASSED  # the real folder untouched


def test_a_typo_in_the_test_command_is_not_green_from_an_old_report(stale_folder: Path) -> None:
    """The reported case: `pytset` with check=False, and the previous run's report in the folder."""
    runner = PipelineRunner(base_dir=stale_folder)
    runner.respond("pytest*", files={"reports/junit.xml": FOUR_PASSED})
    runner.respond("pytset*", exit_code=127, stderr="sh: pytset: not found")
    result = runner.run(_tests_pipeline("pytset --junitxml=reports/junit.xml"))
    assert result.stages["test"].status == "failed", result.describe("test")
    error = result.stages["test"].error or ""
    assert "no JUnit report matches reports/junit.xml" in error
    assert "runner.respond('pytest*', files={'reports/junit.xml':" in error
    assert "4 passed" not in result.output and "test" not in result.test_reports


def test_files_appear_when_their_command_runs_in_their_stage(tmp_path: Path) -> None:
    p = pk.Pipeline(name="order")

    @p.stage
    def early(ctx):
        ctx.junit("reports/junit.xml")  # before the command that writes it

    @p.stage
    def other(ctx):
        ctx.sh("pytest")
        return ctx.junit("reports/junit.xml").summary()

    runner = PipelineRunner(base_dir=tmp_path)
    runner.respond("pytest", stage="other", files={"reports/junit.xml": FOUR_PASSED})
    result = runner.run(p)
    assert result.stages["early"].status == "failed"
    assert "no JUnit report matches" in (result.stages["early"].error or "")
    assert result.stages["other"].output == "4 tests: 4 passed, 0 failed, 0 errors, 0 skipped"


def test_a_missing_artifact_under_the_test_runner_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "app.whl").write_text("the real folder's wheel")
    p = pk.Pipeline(name="package")

    @p.stage
    def package(ctx):
        ctx.sh("make wheel")
        return ctx.archive("dist/*.whl")

    result = PipelineRunner(base_dir=tmp_path).run(p)
    error = result.stages["package"].error or ""
    assert result.stages["package"].status == "failed"
    assert "ctx.archive found no file matching dist/*.whl" in error and "files=" in error
    assert result.artifacts == {}


def test_respond_files_takes_relative_or_absolute_paths_and_text_or_bytes(tmp_path: Path) -> None:
    runner = PipelineRunner(base_dir=tmp_path)
    with pytest.raises(ValueError, match="paths such as 'reports/junit.xml'"):
        runner.respond("x", files={"../outside.xml": "x"})
    with pytest.raises(TypeError, match="not str or bytes"):
        runner.respond("x", files={"a.txt": 3})  # type: ignore[dict-item]


def _host_pipeline(tmp_path: Path, command: str) -> pk.Pipeline:
    p = pk.Pipeline(name="stale", path=str(tmp_path / "pipeline.py"))

    @p.stage
    def test(ctx):
        ctx.sh(command, check=False)
        return ctx.junit("reports/*.xml").summary()

    return p


def test_a_report_older_than_the_stage_is_stale(stale_folder: Path) -> None:
    """A real run (a host stage): the report of an earlier run is not read, and the error says when
    it was written."""
    report = stale_folder / "reports" / "junit.xml"
    an_hour_ago = time.time() - 3600
    os.utime(report, (an_hour_ago, an_hour_ago))
    result = pk.run(_host_pipeline(stale_folder, "pytset --junitxml=reports/junit.xml"), log_file=io.StringIO())
    error = result["test"].error or ""
    assert result["test"].status == "failed"
    assert "the report reports/junit.xml is stale" in error
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(an_hour_ago)) in error
    assert "4 passed" not in error


def test_a_fresh_report_is_read_and_a_stale_one_beside_it_is_left_out(stale_folder: Path) -> None:
    report = stale_folder / "reports" / "junit.xml"
    os.utime(report, (time.time() - 3600, time.time() - 3600))
    fresh = stale_folder / "reports" / "fresh.xml"
    command = f"printf '%s' '{ONE_FAILED}' > {fresh}"
    out = io.StringIO()
    result = pk.run(_host_pipeline(stale_folder, command), log_file=out)
    assert result["test"].status == "failed"
    assert "1 of 2 tests failed" in (result["test"].error or "")
    assert "stale report not read" in out.getvalue() and "reports/junit.xml" in out.getvalue()
