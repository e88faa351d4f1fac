"""pipekit.testing and the pytest plugin: the fake backend is a backend, not a second executor."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
import pipekit.testing
from pipekit.testing import FakeBackend, PipelineRunner, RecordingBackend

pytest_plugins = ["pytester"]
ROOT = Path(__file__).parent.parent

PIPELINE = """
import pipekit as pk

TOKEN = pk.secret("TOKEN")
WHO = pk.param("who", default="world")

@pk.stage(image="busybox", env={"TOKEN": TOKEN})
def greet(ctx):
    return ctx.sh(f"echo hello {ctx.params.who}").stdout.strip()

@pk.stage
def count(ctx):
    ctx.sh("echo 3")

@pk.stage(image="busybox", when=pk.changed("src/**"))
def build(ctx, greet):
    ctx.sh("echo building")

@pk.stage(image="busybox", needs=[count])
def check(ctx, greet):
    ctx.sh("exit 4")

@pk.stage(needs=[check])
def publish(ctx):
    ctx.sh("echo never")
"""


def test_testing_all_is_pinned() -> None:
    """pipekit.testing exports exactly its documented names."""
    assert sorted(pipekit.testing.__all__) == [
        "Call",
        "FakeBackend",
        "PipelineResult",
        "PipelineRunner",
        "RecordingBackend",
        "RunOutcome",
        "SNAPSHOT_ENV",
    ]


def test_fake_backend_implements_the_backend_protocol() -> None:
    """The fake is a pipekit.backend.Backend like the Docker one."""
    from pipekit._backends.docker.backend import DockerBackend
    from pipekit.backend import Backend

    assert isinstance(FakeBackend(), Backend)
    assert isinstance(DockerBackend(), Backend)


def _write(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    return tmp_path / "pipeline.py"


@pytest.mark.docker
def test_same_statuses_and_order_on_the_fake_and_on_docker(tmp_path: Path, busybox_image: str) -> None:
    """One pipeline, run on the fake and on the real engine by the same executor, ends the same way."""
    from pipekit._backends.docker.backend import DockerBackend

    path = _write(tmp_path)
    options: dict[str, Any] = dict(
        jobs=1,
        params={"who": "both"},
        secrets={"TOKEN": "t0ken-value"},
        changed=["docs/x.md"],
        image_map={"busybox": busybox_image},
    )
    fake = PipelineRunner(base_dir=tmp_path)
    fake.respond("echo hello both", stdout="hello both\n").respond("exit 4", exit_code=4)
    docker_backend = RecordingBackend(DockerBackend())
    real = PipelineRunner(backend=docker_backend, base_dir=tmp_path)
    a = fake.run(path, **options)
    b = real.run(path, **options)
    for run_id in docker_backend.run_ids:
        docker_backend.cleanup(run_id)
    assert (
        {n: r.status for n, r in a.stages.items()}
        == {n: r.status for n, r in b.stages.items()}
        == {
            "greet": "succeeded",
            "count": "succeeded",
            "build": "skipped",
            "check": "failed",
            "publish": "skipped",
        }
    )
    assert a.order == b.order == ("greet", "count", "check")
    assert a.stages["greet"].output == b.stages["greet"].output == "hello both"
    for stage in ("greet", "count", "check", "publish"):
        assert a.commands(stage) == b.commands(stage)
    assert a.status == b.status == "failed" and a.exit_code == b.exit_code == 1


def test_commands_record_their_environment_with_secrets_masked(tmp_path: Path) -> None:
    """Each recorded command has the env it got (pipeline, stage, call), secret values masked."""
    runner = PipelineRunner(base_dir=tmp_path)
    result = runner.run(_write(tmp_path), "greet", secrets={"TOKEN": "t0ken-value"})
    [call] = result.calls("greet")
    assert call.text == "echo hello world"
    assert call.env == {"TOKEN": "***"}
    assert "t0ken-value" not in result.output


def test_responses_by_glob_regex_and_stage(tmp_path: Path) -> None:
    """A response matches by exact text, glob or regex, optionally only in one stage; the latest wins."""
    runner = PipelineRunner(base_dir=tmp_path)
    runner.respond("echo *", stdout="glob\n")
    runner.respond(re.compile(r"^echo hello"), stdout="regex\n")
    runner.respond("echo 3", stdout="only in count\n", stage="count")
    result = runner.run(_write(tmp_path), "greet", "count", secrets={"TOKEN": "x"})
    assert result.stages["greet"].output == "regex"
    assert [e["line"] for e in result.events if e["event"] == "output" and e["stage"] == "count"] == ["only in count"]


def test_a_missing_secret_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    """env starts empty: without secrets=, a run of a stage that declares TOKEN is refused naming
    it, as `pipekit run` refuses it; a run of the other stages goes on."""
    with pytest.raises(pk.UsageError, match="stage 'greet' needs the secret 'TOKEN'"):
        PipelineRunner(base_dir=tmp_path).run(_write(tmp_path), "greet", "count")
    result = PipelineRunner(base_dir=tmp_path).run(_write(tmp_path), "count")
    assert result.stages["count"].status == "succeeded"


def test_params_branch_and_changed_files(tmp_path: Path) -> None:
    """Run options as on the command line reach the stages and conditions."""
    runner = PipelineRunner(base_dir=tmp_path)
    result = runner.run(_write(tmp_path), "build", params={"who": "you"}, secrets={"TOKEN": "x"}, changed=["src/a.py"])
    assert result.commands("greet") == ["echo hello you"]
    assert result.stages["build"].status == "succeeded"


def test_scripted_build_failure_and_refused_pull(tmp_path: Path) -> None:
    """respond_build(fail_at=...) and refuse_pull make the errors the Docker backend would."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    p = pk.Pipeline(name="images")

    @p.stage
    def build(ctx):
        return ctx.docker.build(".", tag="app:1")

    @p.stage
    def fetch(ctx):
        ctx.docker.pull("registry.example/base:1")

    runner = PipelineRunner(base_dir=tmp_path)
    runner.respond_build("app:*", fail_at="RUN pip install -r requirements.txt", error="exit code 1", output="ERROR x")
    runner.refuse_pull("registry.example/*")
    result = runner.run(p)
    assert (
        "Image build failed in stage 'build' at `RUN pip install -r requirements.txt`" in result.stages["build"].error
    )
    assert "registry.example/base:1 was not found in registry registry.example" in result.stages["fetch"].error
    assert result.built == [] and result.pulled == []


def test_timeouts_and_retries_on_the_fake() -> None:
    """A scripted delay lets timeouts be tested without an engine; retries show as attempts."""
    p = pk.Pipeline(name="slow")

    @p.stage(timeout=0.2, retries=1)
    def slow(ctx):
        ctx.sh("sleep forever")

    runner = PipelineRunner(base_dir=Path(__file__).parent).respond("sleep forever", delay=30)
    result = runner.run(p)
    assert result.stages["slow"].status == "failed" and result.stages["slow"].timed_out
    assert result.stages["slow"].attempts == 2
    assert result.stages["slow"].error == "Stage 'slow' timed out after 0.2s"
    assert not runner.fake.open_handles


def test_call_tree_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """assert_call_tree writes a missing snapshot, fails with a diff on change, and rewrites on update."""
    monkeypatch.delenv("CI", raising=False)
    path = _write(tmp_path)
    secrets = {"TOKEN": "t0ken-value"}
    runner = PipelineRunner(base_dir=tmp_path, update_snapshots=False).respond("exit 4", exit_code=4)
    snap = tmp_path / "snapshots" / "run.txt"
    failed = runner.run(path, secrets=secrets)
    with pytest.raises(AssertionError, match=r"(?s)The run failed, so its call tree was not recorded.*stage 'check'"):
        failed.assert_call_tree("run")  # a first snapshot of a failed run is not a reference
    assert not snap.exists()
    failed.assert_call_tree("run", allow_failed=True)
    assert snap.read_text() == (
        f"pipeline {tmp_path.name}: failed (exit code 1)\n"
        "|-- greet: succeeded\n"
        "|   `-- $ echo hello world\n"
        "|-- count: succeeded\n"
        "|   `-- $ echo 3\n"
        "|-- build: skipped (condition not met: changed 'src/**')\n"
        "|-- check: failed: Command exited with code 4 in stage 'check': exit 4\n"
        "|   `-- $ exit 4 -> exit 4\n"
        "`-- publish: skipped (upstream 'check' failed)\n"
    )
    runner.respond("exit 4", exit_code=0)
    second = runner.run(path, secrets=secrets)
    with pytest.raises(AssertionError, match=r"(?s)differs from the snapshot.*-\|-- check: failed.*--pipekit-update"):
        second.assert_call_tree("run")
    updating = PipelineRunner(base_dir=tmp_path, update_snapshots=True)
    updating.run(path, secrets=secrets).assert_call_tree("run")
    assert "check: succeeded" in snap.read_text()


def test_a_missing_snapshot_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI set, a missing snapshot is a failure (never written silently); updating still writes it."""
    monkeypatch.setenv("CI", "true")
    path = _write(tmp_path)
    runner = PipelineRunner(base_dir=tmp_path, update_snapshots=False)
    secrets = {"TOKEN": "t0ken-value"}
    with pytest.raises(AssertionError, match="There is no snapshot .*run.txt, and CI is set"):
        runner.run(path, secrets=secrets).assert_call_tree("run")
    assert not (tmp_path / "snapshots" / "run.txt").exists()
    PipelineRunner(base_dir=tmp_path, update_snapshots=True).run(path, secrets=secrets).assert_call_tree("run")
    assert (tmp_path / "snapshots" / "run.txt").exists()


def test_a_wrong_expectation_names_the_stage_its_error_and_commands(pytester: pytest.Pytester) -> None:
    """`assert result.stages[...].status == "succeeded"` explains the stage; a snapshot diff shows no
    pipekit source lines."""
    pytester.makepyfile(
        pipeline="""
import pipekit as pk

@pk.stage
def unit(ctx):
    ctx.sh("pytest -q tests/")
""",
        test_it="""
def test_status(pipekit_runner):
    pipekit_runner.respond("pytest*", exit_code=2, stdout="E   assert 1 == 2")
    result = pipekit_runner.run("pipeline.py")
    assert result.stages["unit"].status == "succeeded"

def test_snapshot(pipekit_runner, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    (pipekit_runner.snapshot_dir).mkdir()
    (pipekit_runner.snapshot_dir / "s.txt").write_text("something else")
    pipekit_runner.run("pipeline.py").assert_call_tree("s")
""",
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "stage 'unit' failed" in out
    assert "Command exited with code 2 in stage 'unit': pytest -q tests/" in out
    assert "sh: pytest -q tests/ -> exit 2" in out
    assert "differs from the snapshot" in out
    assert "__tracebackhide__" not in out and "def assert_call_tree" not in out


def test_plugin_fixtures_and_options(pytester: pytest.Pytester) -> None:
    """Installing pipekit is enough: the fixture, marker and option come from the pytest11 entry point."""
    pytester.makepyfile(
        pipeline="""
import pipekit as pk

@pk.stage
def hello(ctx):
    ctx.sh("echo hi")
""",
        test_it="""
import pytest

def test_runner(pipekit_runner):
    result = pipekit_runner.run("pipeline.py")
    assert result.commands("hello") == ["echo hi"]
    result.assert_call_tree("hello")

@pytest.mark.pipekit_docker
def test_marked():
    pass
""",
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--pipekit-update-snapshots")
    result.assert_outcomes(passed=2)
    assert (pytester.path / "snapshots" / "hello.txt").read_text() == (
        "pipeline test_plugin_fixtures_and_options0: succeeded (exit code 0)\n`-- hello: succeeded\n    `-- $ echo hi\n"
    )


def test_marker_skips_with_a_reason_when_no_engine(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an engine, pipekit_docker tests are skipped and say why."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{pytester.path}/none.sock")
    pytester.makepyfile(
        test_it="""
import pytest

@pytest.mark.pipekit_docker
def test_marked():
    pass

def test_fixture(pipekit_docker_runner):
    pass
"""
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no Docker engine answers: Cannot reach a Docker engine at unix://*none.sock*"])


@pytest.mark.docker
def test_docker_runner_fixture_runs_for_real(pytester: pytest.Pytester, busybox_image: str) -> None:
    """pipekit_docker_runner runs on the engine, records like the fake, and cleans up."""
    pytester.makepyfile(
        pipeline=f"""
import pipekit as pk

@pk.stage(image="{busybox_image}")
def hello(ctx):
    return ctx.sh("cat /etc/hostname >/dev/null && echo real").stdout.strip()
""",
        test_it="""
def test_real(pipekit_docker_runner):
    result = pipekit_docker_runner.run("pipeline.py")
    assert result.stages["hello"].output == "real"
    assert result.commands("hello") == ["cat /etc/hostname >/dev/null && echo real"]
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("example", ["hello", "seed-flow"])
def test_each_example_ships_passing_pipeline_tests(example: str) -> None:
    """examples/*/test_pipeline.py pass with the plugin, run the way a user runs them."""
    folder = ROOT / "examples" / example
    assert (folder / "test_pipeline.py").is_file()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_pipeline.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout


def test_archive_and_junit_on_the_fake(tmp_path: Path) -> None:
    """ctx.archive reads the files scripted commands wrote (workspace and absolute paths), never
    the real folder; ctx.junit records; both show in the result."""
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "real.whl").write_text("the real folder's file")
    p = pk.Pipeline(name="records")

    @p.stage
    def package(ctx):
        ctx.sh("make dist")
        return ctx.archive("dist/*.whl", "/out/*.log", "/out/build.log")

    @p.stage
    def test(ctx):
        ctx.sh("pytest --junitxml=junit.xml")
        return ctx.junit("junit.xml", fail_on_failure=False).summary()

    runner = PipelineRunner(base_dir=tmp_path)
    runner.respond("make dist", files={"dist/app.whl": "wheel", "/out/build.log": b"log"})
    runner.respond(
        "pytest*",
        files={
            "junit.xml": '<testsuite><testcase classname="t" name="a"/><testcase classname="t" name="b">'
            '<failure message="boom"/></testcase></testsuite>'
        },
    )
    result = runner.run(p)
    assert result.stages["package"].output == ["dist/app.whl", "/out/build.log", "/out/build.log"]
    assert result.artifacts[("package", "dist/app.whl")] == b"wheel"
    assert result.artifacts[("package", "/out/build.log")] == b"log"
    assert ("package", "dist/real.whl") not in result.artifacts
    assert result.stages["test"].output == "2 tests: 1 passed, 1 failed, 0 errors, 0 skipped"
    assert result.test_reports["test"].failed[0].message == "boom"


def test_a_failed_run_is_never_recorded_as_a_snapshot(pytester: pytest.Pytester) -> None:
    """The first `assert_call_tree` of a failing run fails the test, naming the stage, its error and
    its command, and writes nothing; with --pipekit-update-snapshots too."""
    pytester.makepyfile(
        pipeline="""
import pipekit as pk

@pk.stage
def unit(ctx):
    ctx.sh("pytest -q tests/")
""",
        test_it="""
def test_first_snapshot(pipekit_runner, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pipekit_runner.respond("pytest*", exit_code=2, stdout="E   assert 1 == 2")
    pipekit_runner.run("pipeline.py").assert_call_tree("first")
""",
    )
    for options in ((), ("--pipekit-update-snapshots",)):
        result = pytester.runpytest("-p", "no:cacheprovider", *options)
        result.assert_outcomes(failed=1)
        out = result.stdout.str()
        assert "The run failed, so its call tree was not recorded" in out
        assert "stage 'unit' failed" in out and "sh: pytest -q tests/ -> exit 2" in out
        assert "allow_failed=True" in out
        assert not (pytester.path / "snapshots" / "first.txt").exists()


def test_a_wrong_run_status_names_the_failed_stages(pytester: pytest.Pytester) -> None:
    """`assert result.status == "succeeded"` in a user's test names each failed stage, its error
    and its commands, with the plain runner too (not only the fixture's)."""
    pytester.makepyfile(
        pipeline="""
import pipekit as pk

@pk.stage
def lint(ctx):
    ctx.sh("ruff check .")

@pk.stage
def unit(ctx):
    ctx.sh("pytest -q tests/")

@pk.stage
def docs(ctx):
    ctx.sh("mkdocs build")
""",
        test_it="""
from pathlib import Path
from pipekit.testing import PipelineRunner

def test_fixture(pipekit_runner):
    pipekit_runner.respond("pytest*", exit_code=2, stdout="E   assert 1 == 2")
    pipekit_runner.respond("mkdocs*", exit_code=1, stderr="config not found")
    result = pipekit_runner.run("pipeline.py")
    assert result.status == "succeeded"

def test_plain_runner():
    runner = PipelineRunner(base_dir=Path(__file__).parent).respond("ruff*", exit_code=1)
    result = runner.run("pipeline.py")
    assert "succeeded" == result.status

def test_still_a_string(pipekit_runner):
    result = pipekit_runner.run("pipeline.py")
    assert result.status == "succeeded" and f"{result.status}" == "succeeded" and result.status.upper() == "SUCCEEDED"
    assert {result.status: 1} == {"succeeded": 1}
""",
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, passed=1)
    out = result.stdout.str()
    assert "run status 'failed' == 'succeeded'" in out
    assert "stages: lint=succeeded, unit=failed, docs=failed" in out
    assert "stage 'unit' failed: Command exited with code 2 in stage 'unit': pytest -q tests/" in out
    assert "sh: pytest -q tests/ -> exit 2" in out
    assert "stage 'docs' failed: Command exited with code 1 in stage 'docs': mkdocs build" in out
    assert "sh: mkdocs build -> exit 1" in out
    assert "stage 'lint' failed: Command exited with code 1 in stage 'lint': ruff check ." in out  # plain runner
    assert "sh: ruff check . -> exit 1" in out
    verbose = pytester.runpytest("-p", "no:cacheprovider", "-vv").stdout.str()
    assert "E   assert 1 == 2" in verbose and "config not found" in verbose  # the whole errors, with -vv
