"""Test pipelines in pytest, with no Docker engine: ``pipekit.testing``.

The pytest plugin (installed with pipekit) gives each test a ``pipekit_runner``::

    def test_deploy_skipped_on_feature_branch(pipekit_runner):
        result = pipekit_runner.run("pipeline.py", branch="feature/x")
        assert result.stages["deploy"].status == "skipped"

The runner runs the pipeline with pipekit's own executor on a :class:`FakeBackend`: no container
starts; every command, build, tag, push and pull is recorded; commands succeed with empty output
unless a response is scripted (:meth:`PipelineRunner.respond`). The same runner on a
:class:`RecordingBackend` around the Docker backend (fixture ``pipekit_docker_runner``) runs for
real and records the same things, so a unit test and an integration test read alike.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipekit._backends.fake import Call, FakeBackend, Pattern, RecordingBackend
from pipekit._core.results import RunResult, StageResult
from pipekit._core.testreport import TestReport
from pipekit._dsl.stage import Pipeline

__all__ = [
    "Call",
    "FakeBackend",
    "PipelineResult",
    "PipelineRunner",
    "RecordingBackend",
    "RunOutcome",
    "SNAPSHOT_ENV",
]

SNAPSHOT_ENV = "PIPEKIT_UPDATE_SNAPSHOTS"


def _collect(events: list[dict[str, Any]]) -> Any:
    """A structlog processor that keeps a copy of every event."""

    def record(_logger: Any, _name: str, event: Any) -> Any:
        events.append(dict(event))
        return event

    return record


class RunOutcome(str):
    """A run's status (``succeeded``, ``failed``, ``interrupted``): a plain string that knows its
    run, so that a failed ``assert result.status == "succeeded"`` names the stages that failed,
    their errors and their commands (through pipekit's pytest plugin)."""

    result: PipelineResult | None

    def __new__(cls, value: str, result: PipelineResult | None = None) -> RunOutcome:
        outcome = super().__new__(cls, str(value))
        outcome.result = result
        return outcome

    def explain(self) -> list[str]:
        """Each stage's status, then each stage that did not end well in a line (its error's first
        line) with its failed commands, then their whole errors (pytest shows the first lines
        unless run with ``-vv``)."""
        r = self.result
        if r is None:
            return []
        bad = [n for n, s in r.stages.items() if s.status in ("failed", "interrupted", "cancelled", "allowed_failure")]
        lines = ["stages: " + ", ".join(f"{n}={s.status}" for n, s in r.stages.items())]
        for name in bad:
            stage = r.stages[name]
            first = next((line for line in (stage.error or stage.reason or "").splitlines() if line.strip()), "")
            lines.append(f"stage '{name}' {stage.status}" + (f": {first}" if first else ""))
            lines += [f"  {c.kind}: {c.text} -> exit {c.exit_code}" for c in r.calls(name) if c.exit_code]
        if bad:
            lines.append("in full:")
            for name in bad:
                lines += r.describe(name)
        return lines[:60]


class PipelineResult:
    """A run to assert on: status, exit code, each stage's result, and what the stages did."""

    def __init__(
        self,
        run: RunResult,
        calls: Sequence[Call],
        events: Sequence[Mapping[str, Any]],
        output: str,
        snapshot_dir: Path,
        update_snapshots: bool,
    ) -> None:
        self.run = run
        self._calls = list(calls)
        self.events = list(events)
        self.output = output
        self._snapshot_dir = snapshot_dir
        self._update = update_snapshots
        #: files archived with ctx.archive: {(stage, path): content}
        self.artifacts: dict[tuple[str, str], bytes] = {}
        #: reports read with ctx.junit: {stage: pk.TestReport}
        self.test_reports: dict[str, TestReport] = {}

    @property
    def status(self) -> RunOutcome:
        """``succeeded``, ``failed`` or ``interrupted`` (a ``str``; see :class:`RunOutcome`)."""
        return RunOutcome(self.run.status, self)

    @property
    def exit_code(self) -> int:
        return self.run.exit_code

    @property
    def stages(self) -> Mapping[str, StageResult]:
        """Each stage's result: ``status`` (succeeded, failed, allowed_failure, skipped, cancelled),
        ``reason``, ``error``, ``attempts``, ``timed_out``, ``output``."""
        return self.run.stages

    @property
    def order(self) -> tuple[str, ...]:
        """The stages in the order they started."""
        return self.run.started

    def calls(self, stage: str | None = None, kind: str | None = None) -> list[Call]:
        return [c for c in self._calls if (stage is None or c.stage == stage) and (kind is None or c.kind == kind)]

    def commands(self, stage: str) -> list[str]:
        """The commands a stage ran, ``ctx.sh`` and ``ctx.docker.run`` alike, in order."""
        return [c.text for c in self._calls if c.stage == stage and c.kind in ("sh", "run")]

    @property
    def built(self) -> list[str]:
        """The images built: their tags (or ids when untagged)."""
        return [c.ref or c.image or "" for c in self._calls if c.kind == "build" and c.exit_code == 0]

    @property
    def tagged(self) -> list[str]:
        return [c.ref or "" for c in self._calls if c.kind == "tag"]

    @property
    def pushed(self) -> list[str]:
        """The references pushed successfully."""
        return [c.ref or "" for c in self._calls if c.kind == "push" and c.exit_code == 0]

    @property
    def pulled(self) -> list[str]:
        return [c.ref or "" for c in self._calls if c.kind == "pull" and c.exit_code == 0]

    def call_tree(self) -> str:
        """A readable, stable text of the run: each stage, its outcome, and what it did."""
        lines = [f"pipeline {self.run.pipeline}: {self.status} (exit code {self.exit_code})"]
        names = list(self.stages)
        for i, name in enumerate(names):
            r = self.stages[name]
            last = i == len(names) - 1
            detail = ""
            if r.reason:
                detail = f" ({r.reason})"
            elif r.error:
                detail = f": {r.error.splitlines()[0]}"
            tries = f" after {r.attempts} attempts" if r.attempts > 1 else ""
            lines.append(f"{'`--' if last else '|--'} {name}: {r.status}{tries}{detail}")
            own = self.calls(name)
            for j, c in enumerate(own):
                branch = "`--" if j == len(own) - 1 else "|--"
                code = f" -> exit {c.exit_code}" if c.kind in ("sh", "run") and c.exit_code else ""
                prefix = {"sh": "$ ", "run": "docker run: "}.get(c.kind, "")
                lines.append(f"{'    ' if last else '|   '}{branch} {prefix}{c.text}{code}")
        return "\n".join(lines) + "\n"

    def assert_call_tree(self, name: str | Path, *, allow_failed: bool = False) -> None:
        """Compare :meth:`call_tree` with a stored snapshot; write it when updating
        (``pytest --pipekit-update-snapshots`` or ``PIPEKIT_UPDATE_SNAPSHOTS=1``) or when it is
        missing, except under CI (``CI`` set), where a missing snapshot fails the test. A run
        that did not succeed is not recorded (the test fails, naming what failed) unless
        ``allow_failed=True`` says that the failure is what the snapshot is about."""
        __tracebackhide__ = True
        path = Path(name)
        if not path.is_absolute():
            path = self._snapshot_dir / path
        if path.suffix != ".txt":
            path = path.with_name(path.name + ".txt")
        tree = self.call_tree()
        if not path.exists() and not self._update and os.environ.get("CI", "").lower() not in ("", "0", "false"):
            raise AssertionError(
                f"There is no snapshot {path}, and CI is set, so it was not written. Run the test with"
                " --pipekit-update-snapshots where you develop and commit the file"
            )
        if self._update or not path.exists():
            if self.run.status != "succeeded" and not allow_failed:
                explained = "\n".join(f"  {line}" for line in self.status.explain())
                raise AssertionError(
                    f"The run {self.run.status}, so its call tree was not recorded as the snapshot {path}:\n"
                    f"{explained}\nFix the run, or pass allow_failed=True to record a run that fails on purpose"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(tree)
            return
        expected = path.read_text()
        if expected != tree:
            import difflib

            diff = "".join(
                difflib.unified_diff(expected.splitlines(True), tree.splitlines(True), str(path), "this run")
            )
            raise AssertionError(
                f"The run's call tree differs from the snapshot {path}:\n{diff}\n"
                "If the change is intended, rerun with --pipekit-update-snapshots"
            )

    def describe(self, stage: str) -> list[str]:
        """How a stage ended, for an assertion message: status, error, commands with exit codes."""
        r = self.stages.get(stage)
        if r is None:
            return [f"there is no stage '{stage}' (stages: {', '.join(self.stages)})"]
        why = f" ({r.reason})" if r.reason else ""
        lines = [f"stage '{stage}' {r.status}{why}"]
        lines += [f"  {line}" for line in (r.error or "").splitlines()[:15]]
        for c in self.calls(stage):
            code = f" -> exit {c.exit_code}" if c.exit_code else ""
            lines.append(f"  {c.kind}: {c.text}{code}")
        return lines

    def __repr__(self) -> str:
        statuses = ", ".join(f"{n}={r.status}" for n, r in self.stages.items())
        return f"<PipelineResult {self.status}: {statuses}>"


class PipelineRunner:
    """Runs pipelines for tests, on a :class:`FakeBackend` unless given another backend."""

    def __init__(
        self,
        *,
        backend: Any = None,
        strict: bool = False,
        base_dir: str | Path | None = None,
        snapshot_dir: str | Path | None = None,
        update_snapshots: bool | None = None,
    ) -> None:
        self.backend = backend if backend is not None else FakeBackend(strict=strict)
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else self.base_dir / "snapshots"
        self.update_snapshots = bool(os.environ.get(SNAPSHOT_ENV)) if update_snapshots is None else update_snapshots
        self.results: list[PipelineResult] = []
        self.decisions: dict[str, Any] = {}  # approval gates decided for the runs to come

    def approve(self, stage: str, *, by: str = "tester", params: Mapping[str, Any] | None = None) -> PipelineRunner:
        """Approve ``stage``'s gate (``pk.Approval``) in the runs to come: it starts, and its
        ``ctx.approval`` has ``by`` and ``params`` (converted to the declared types, as from the
        command line; a parameter without a default must be given)."""
        from pipekit._dsl.approval import Decision

        self.decisions[stage] = Decision(approved=True, by=by, via="test", params=dict(params or {}))
        return self

    def reject(self, stage: str, *, by: str = "tester", reason: str = "rejected in a test") -> PipelineRunner:
        """Reject ``stage``'s gate in the runs to come: the stage fails with ``reason``."""
        from pipekit._dsl.approval import Decision

        self.decisions[stage] = Decision(approved=False, by=by, via="test", reason=reason)
        return self

    @property
    def fake(self) -> FakeBackend:
        if not isinstance(self.backend, FakeBackend):
            raise TypeError("scripted responses need the fake backend (the pipekit_runner fixture)")
        return self.backend

    @property
    def strict(self) -> bool:
        return self.fake.strict

    @strict.setter
    def strict(self, value: bool) -> None:
        self.fake.strict = value

    def respond(
        self,
        pattern: Pattern,
        *,
        exit_code: int = 0,
        stdout: str = "",
        stderr: str = "",
        stage: Pattern | None = None,
        delay: float = 0.0,
        files: Mapping[str, str | bytes] | None = None,
    ) -> PipelineRunner:
        """Script what a command returns. ``pattern``: exact text, a glob, or ``re.compile(...)``.

        ``files``: what the command writes, ``{"reports/junit.xml": "<testsuite>...", ...}`` (paths
        relative to the workspace, or absolute in the stage's container; text or bytes), put in the
        stage's own view of the workspace when the command runs. ``ctx.junit`` and ``ctx.archive``
        read only those files under the test runner, never the real folder."""
        self.fake.respond(
            pattern, exit_code=exit_code, stdout=stdout, stderr=stderr, stage=stage, delay=delay, files=files
        )
        return self

    def respond_build(
        self, tag: Pattern = "*", *, fail_at: str | None = None, error: str = "", output: str = ""
    ) -> PipelineRunner:
        """Script a build: its output, or (with ``fail_at``) a failure at that instruction."""
        self.fake.respond_build(tag, fail_at=fail_at, error=error, output=output)
        return self

    def refuse_push(self, ref: Pattern = "*", message: str = "unauthorized: authentication required") -> PipelineRunner:
        """Make pushes to matching references fail as the registry would (default: auth refused)."""
        self.fake.refuse_push(ref, message)
        return self

    def refuse_pull(self, ref: Pattern = "*", message: str = "manifest unknown") -> PipelineRunner:
        self.fake.refuse_pull(ref, message)
        return self

    def _request(self, pipeline: Pipeline | Path, options: dict[str, Any]) -> Any:
        from pipekit._run.session import RunRequest

        host = self.backend.host() if isinstance(self.backend, RecordingBackend) else None
        return RunRequest(pipeline=pipeline, workspace=self.base_dir, backend=self.backend, host=host, **options)

    def run(
        self,
        pipeline: Pipeline | str | Path,
        *stages: str,
        branch: str | None = None,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        changed: Iterable[str] | None = (),
        changed_base: str | None = None,
        jobs: int = 4,
        fail_fast: bool = False,
        timeout: float | str | None = None,
        image_map: Mapping[str, str] | None = None,
        **options: Any,
    ) -> PipelineResult:
        """Run a pipeline (a path, relative to the test's folder, or a ``pk.Pipeline``).

        As on the command line: ``branch``, ``params`` (text or typed values), selected ``stages``,
        ``secrets`` (like a ``--secrets-file``), ``changed`` files for ``pk.changed``, ``jobs``,
        ``fail_fast``, ``timeout``, ``image_map``, and any other option of :func:`pipekit.run`.
        ``env`` is the environment conditions and secrets see. Both start empty (no variables, no
        changed files; ``changed=None`` asks git), so tests do not depend on the machine they run on.
        """
        from pipekit._run.context import MemoryRecords
        from pipekit._run.runner import run_setup
        from pipekit._run.session import setup

        if not isinstance(pipeline, Pipeline):
            path = Path(pipeline)
            pipeline = path if path.is_absolute() else self.base_dir / path
        events: list[dict[str, Any]] = []
        output, records = io.StringIO(), MemoryRecords()
        options.update(
            targets=stages,
            branch=branch,
            params=dict(params or {}),
            environ=dict(env or {}),
            secrets=dict(secrets or {}),
            changed=list(changed) if changed is not None else None,
            changed_base=changed_base,
            jobs=jobs,
            fail_fast=fail_fast,
            timeout=timeout,
            image_map=dict(image_map or {}),
            log_file=output,
            log_processors=[_collect(events)],
            records=records,
        )
        options.setdefault("decisions", dict(self.decisions))
        prepared = setup(self._request(pipeline, options))
        before = len(self.backend.calls)
        run = run_setup(prepared)
        calls = [c.masked(prepared.secrets.masker.mask) for c in self.backend.calls[before:]]
        result = PipelineResult(run, calls, events, output.getvalue(), self.snapshot_dir, self.update_snapshots)
        result.artifacts = dict(records.artifacts)
        result.test_reports = dict(records.tests)
        self.results.append(result)
        return result
