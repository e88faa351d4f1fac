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

import fnmatch
import hashlib
import io
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pipekit._conditions import RunInfo
from pipekit._context import MemoryRecords
from pipekit._executor import Executor, RunResult, StageResult
from pipekit._graph import plan as make_plan
from pipekit._loader import load
from pipekit._params import resolve_params
from pipekit._registry import registry_error
from pipekit._reports import TestReport
from pipekit._secrets import SecretStore
from pipekit._stage import Pipeline
from pipekit.backend import Backend, BuildSpec, CommandResult, Image, LineSink, StageHandle, StageSpec
from pipekit.exceptions import BuildFailed, StageFailed

__all__ = [
    "Call",
    "FakeBackend",
    "PipelineResult",
    "PipelineRunner",
    "RecordingBackend",
    "SNAPSHOT_ENV",
]

SNAPSHOT_ENV = "PIPEKIT_UPDATE_SNAPSHOTS"
Pattern = str | re.Pattern[str]


def _matcher(pattern: Pattern) -> Callable[[str], bool]:
    """Exact text, a glob (``*``, ``?``, ``[``), or a compiled regex (searched)."""
    if isinstance(pattern, re.Pattern):
        return lambda text: pattern.search(text) is not None
    if any(c in pattern for c in "*?["):
        return lambda text: fnmatch.fnmatchcase(text, pattern)
    return lambda text: text == pattern


@attrs.frozen
class Call:
    """One thing a stage did: a command (``sh``, ``run``), a ``build``, ``tag``, ``push``, ``pull``
    or a ``service`` started. ``env`` holds the variables the command got (secrets masked)."""

    stage: str
    kind: str
    text: str
    env: Mapping[str, str] = attrs.field(factory=dict)
    exit_code: int | None = None
    ref: str | None = None
    image: str | None = None


@attrs.frozen
class _Response:
    matches: Callable[[str], bool] = attrs.field(repr=False)
    stage: Callable[[str], bool] | None = attrs.field(repr=False)
    exit_code: int
    stdout: str
    stderr: str
    delay: float


@attrs.frozen
class _Refusal:
    matches: Callable[[str], bool] = attrs.field(repr=False)
    message: str


@attrs.frozen
class _BuildRule:
    matches: Callable[[str], bool] = attrs.field(repr=False)
    fail_at: str | None
    error: str
    output: str


def _fake_id(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


class _Recording:
    """The record that both test backends keep."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)


class FakeBackend(_Recording):
    """A backend where nothing runs: commands answer from a script, images are made up.

    Unscripted commands succeed with no output; with ``strict=True`` they fail their stage
    instead, so a test notices a command it did not expect.
    """

    name = "fake"

    def __init__(self, *, strict: bool = False) -> None:
        super().__init__()
        self.strict = strict
        self._responses: list[_Response] = []
        self._builds: list[_BuildRule] = []
        self._push_refusals: list[_Refusal] = []
        self._pull_refusals: list[_Refusal] = []
        self._released: dict[str, threading.Event] = {}
        self.open_handles: set[str] = set()

    # -- scripting ------------------------------------------------------------------------
    def respond(
        self,
        pattern: Pattern,
        *,
        exit_code: int = 0,
        stdout: str = "",
        stderr: str = "",
        stage: Pattern | None = None,
        delay: float = 0.0,
    ) -> None:
        self._responses.append(
            _Response(
                _matcher(pattern), _matcher(stage) if stage is not None else None, exit_code, stdout, stderr, delay
            )
        )

    def respond_build(
        self, tag: Pattern = "*", *, fail_at: str | None = None, error: str = "", output: str = ""
    ) -> None:
        self._builds.append(_BuildRule(_matcher(tag), fail_at, error or "the build failed", output))

    def refuse_push(self, ref: Pattern = "*", message: str = "unauthorized: authentication required") -> None:
        self._push_refusals.append(_Refusal(_matcher(ref), message))

    def refuse_pull(self, ref: Pattern = "*", message: str = "manifest unknown") -> None:
        self._pull_refusals.append(_Refusal(_matcher(ref), message))

    def _response(self, stage: str, text: str) -> _Response | None:
        for r in reversed(self._responses):  # the latest matching response wins
            if r.matches(text) and (r.stage is None or r.stage(stage)):
                return r
        return None

    # -- the Backend protocol -------------------------------------------------------------
    def check(self) -> None:
        return None

    def prepare(self, spec: StageSpec) -> StageHandle:
        key = uuid.uuid4().hex
        self._released[key] = threading.Event()
        self.open_handles.add(key)
        for svc in spec.services:
            self.record(Call(spec.stage, "service", f"{svc.name} ({svc.image})", image=svc.image))
        return StageHandle(spec=spec, ref=key, where=f"fake {spec.image or 'host'}")

    def _answer(
        self, handle_key: str | None, stage: str, kind: str, text: str, env: Mapping[str, str], on_line: LineSink
    ) -> CommandResult:
        response = self._response(stage, text)
        if response is None and self.strict:
            self.record(Call(stage, kind, text, dict(env), exit_code=None))
            raise StageFailed(
                f"Stage '{stage}' ran `{text}`, which no response is scripted for (strict mode)."
                f" Add runner.respond({text!r}, ...) if the command is expected",
                stage=stage,
            )
        exit_code, stdout, stderr = (response.exit_code, response.stdout, response.stderr) if response else (0, "", "")
        start = time.monotonic()
        if response is not None and response.delay:
            released = self._released.get(handle_key or "")
            if released is not None and released.wait(response.delay):
                exit_code, stdout, stderr = 137, "", ""
        for line in stdout.splitlines():
            on_line("stdout", line)
        for line in stderr.splitlines():
            on_line("stderr", line)
        self.record(Call(stage, kind, text, dict(env), exit_code=exit_code))
        return CommandResult(text, exit_code, stdout, stderr, time.monotonic() - start)

    def exec(self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink) -> CommandResult:
        return self._answer(str(handle.ref), handle.spec.stage, "sh", command, {**handle.spec.env, **env}, on_line)

    def release(self, handle: StageHandle) -> None:
        key = str(handle.ref)
        if key in self._released:
            self._released[key].set()
        self.open_handles.discard(key)

    def cleanup(self, run_id: str) -> None:
        return None

    def image_id(self, image: str) -> str:
        return _fake_id("image", image)

    def copy_out(self, handle: StageHandle, path: str) -> list[tuple[str, bytes]]:
        return []

    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        tag = spec.tag or ""
        args = "".join(f" --build-arg {k}={v}" for k, v in spec.build_args.items())
        secrets = "".join(f" --secret id={k}" for k in spec.secrets)
        target = f" --target {spec.target}" if spec.target else ""
        text = f"build {spec.dockerfile}{args}{target}{secrets}" + (f" -t {tag}" if tag else "")
        rule = next((r for r in reversed(self._builds) if r.matches(tag)), None)
        if rule is not None:
            for line in rule.output.splitlines():
                on_line("stdout", line)
        if rule is not None and rule.fail_at is not None:
            self.record(Call(spec.stage, "build", text, ref=tag or None, exit_code=1))
            raise BuildFailed(
                stage=spec.stage,
                instruction=rule.fail_at,
                reason=rule.error,
                output_tail=rule.output.splitlines()[-20:],
            )
        image = Image(
            id=_fake_id("build", tag, spec.dockerfile, str(sorted(spec.build_args.items()))), tags=(tag,) if tag else ()
        )
        self.record(Call(spec.stage, "build", text, ref=tag or None, image=image.id, exit_code=0))
        return image

    def tag(self, image: Image, ref: str) -> Image:
        full = ref if ":" in ref.rsplit("/", 1)[-1] or "@" in ref else f"{ref}:latest"
        stage = _current_stage.get()
        self.record(Call(stage, "tag", f"tag {image.ref} {full}", ref=full, image=image.id))
        return Image(id=image.id, tags=(full, *(t for t in image.tags if t != full)))

    def push(self, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> str:
        stage = _current_stage.get()
        for refusal in reversed(self._push_refusals):
            if refusal.matches(ref):
                self.record(Call(stage, "push", f"push {ref}", ref=ref, exit_code=1))
                raise registry_error(refusal.message, ref, "push to")
        digest = _fake_id("push", ref)
        on_line("stdout", f"latest: digest: {digest}")
        self.record(Call(stage, "push", f"push {ref}", ref=ref, image=digest, exit_code=0))
        return digest

    def pull(self, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> Image:
        stage = _current_stage.get()
        for refusal in reversed(self._pull_refusals):
            if refusal.matches(ref):
                self.record(Call(stage, "pull", f"pull {ref}", ref=ref, exit_code=1))
                raise registry_error(refusal.message, ref, "pull from")
        image = Image(id=_fake_id("pull", ref), tags=(ref,))
        self.record(Call(stage, "pull", f"pull {ref}", ref=ref, image=image.id, exit_code=0))
        return image

    def run_once(
        self, run_id: str, stage: str, image: str, command: list[str] | None, env: Mapping[str, str], on_line: LineSink
    ) -> CommandResult:
        text = " ".join(command) if command else "(the image's command)"
        return self._answer(None, stage, "run", text, env, on_line)


class _StageVar:
    """Which stage the calling thread runs (for the image calls, whose arguments do not say)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> str:
        return getattr(self._local, "stage", "?")

    def set(self, stage: str) -> None:
        self._local.stage = stage


_current_stage = _StageVar()


class RecordingBackend(_Recording):
    """Wraps a real backend (the Docker one) and records what stages do, like FakeBackend."""

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner = inner
        self.name = f"recording {inner.name}"
        self.run_ids: set[str] = set()

    def check(self) -> None:
        self.inner.check()

    def prepare(self, spec: StageSpec) -> StageHandle:
        self.run_ids.add(spec.run_id)
        for svc in spec.services:
            self.record(Call(spec.stage, "service", f"{svc.name} ({svc.image})", image=svc.image))
        return self.inner.prepare(spec)

    def exec(self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink) -> CommandResult:
        result = self.inner.exec(handle, command, env, on_line)
        self.record(Call(handle.spec.stage, "sh", command, {**handle.spec.env, **env}, exit_code=result.exit_code))
        return result

    def release(self, handle: StageHandle) -> None:
        self.inner.release(handle)

    def cleanup(self, run_id: str) -> None:
        self.inner.cleanup(run_id)

    def image_id(self, image: str) -> str:
        return self.inner.image_id(image)

    def copy_out(self, handle: StageHandle, path: str) -> list[tuple[str, bytes]]:
        return self.inner.copy_out(handle, path)

    def build(self, spec: BuildSpec, on_line: LineSink) -> Image:
        image = self.inner.build(spec, on_line)
        self.record(Call(spec.stage, "build", f"build {spec.dockerfile}", ref=spec.tag, image=image.id, exit_code=0))
        return image

    def tag(self, image: Image, ref: str) -> Image:
        tagged = self.inner.tag(image, ref)
        self.record(Call(_current_stage.get(), "tag", f"tag {image.ref} {tagged.tags[0]}", ref=tagged.tags[0]))
        return tagged

    def push(self, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> str:
        digest = self.inner.push(ref, auth, on_line)
        self.record(Call(_current_stage.get(), "push", f"push {ref}", ref=ref, image=digest, exit_code=0))
        return digest

    def pull(self, ref: str, auth: Mapping[str, str] | None, on_line: LineSink) -> Image:
        image = self.inner.pull(ref, auth, on_line)
        self.record(Call(_current_stage.get(), "pull", f"pull {ref}", ref=ref, image=image.id, exit_code=0))
        return image

    def run_once(
        self, run_id: str, stage: str, image: str, command: list[str] | None, env: Mapping[str, str], on_line: LineSink
    ) -> CommandResult:
        result = self.inner.run_once(run_id, stage, image, command, env, on_line)
        self.record(Call(stage, "run", result.command, dict(env), exit_code=result.exit_code))
        return result


class _StageTracking:
    """Tells the backend which stage each worker thread runs (for tag, push and pull records)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.name = backend.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def prepare(self, spec: StageSpec) -> StageHandle:
        _current_stage.set(spec.stage)
        handle: StageHandle = self._backend.prepare(spec)
        return handle


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
    def status(self) -> str:
        """``succeeded``, ``failed`` or ``interrupted``."""
        return self.run.status

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

    def assert_call_tree(self, name: str | Path) -> None:
        """Compare :meth:`call_tree` with a stored snapshot; write it when missing or when updating
        (``pytest --pipekit-update-snapshots`` or ``PIPEKIT_UPDATE_SNAPSHOTS=1``)."""
        path = Path(name)
        if not path.is_absolute():
            path = self._snapshot_dir / path
        if path.suffix != ".txt":
            path = path.with_name(path.name + ".txt")
        tree = self.call_tree()
        if self._update or not path.exists():
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
    ) -> PipelineRunner:
        """Script what a command returns. ``pattern``: exact text, a glob, or ``re.compile(...)``."""
        self.fake.respond(pattern, exit_code=exit_code, stdout=stdout, stderr=stderr, stage=stage, delay=delay)
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
        timeout: float | None = None,
        image_map: Mapping[str, str] | None = None,
    ) -> PipelineResult:
        """Run a pipeline (a path, relative to the test's folder, or a ``pk.Pipeline``).

        As on the command line: ``branch``, ``params`` (text or typed values), selected ``stages``,
        ``secrets`` (like a ``--secrets-file``), ``changed`` files for ``pk.changed``. ``env`` is
        the environment conditions and secrets see. Both start empty (no variables, no changed
        files; ``changed=None`` asks git), so tests do not depend on the machine they run on.
        """
        if isinstance(pipeline, Pipeline):
            p = pipeline
        else:
            path = Path(pipeline)
            p = load(path if path.is_absolute() else self.base_dir / path)
        environ = dict(env or {})
        values = resolve_params(p.params.values(), {k: str(v) for k, v in (params or {}).items()})
        store = SecretStore(file_values=dict(secrets or {}), environ=environ)
        workspace = Path(p.path).parent if p.path else self.base_dir
        info = RunInfo(
            workspace=workspace,
            branch=branch,
            environ=environ,
            params=values,
            changed_files=list(changed) if changed is not None else None,
            changed_base=changed_base,
        )
        events: list[dict[str, Any]] = []

        def record(_logger: Any, _name: str, event: Any) -> Any:
            events.append(dict(event))
            return event

        output = io.StringIO()
        records = MemoryRecords()
        executor = Executor(
            _StageTracking(self.backend),
            jobs=jobs,
            fail_fast=fail_fast,
            log_file=output,
            log_processors=[record],
            image_map=image_map,
            params=values,
            secrets=store,
            run_info=info,
            run_timeout=timeout,
            workspace=workspace,
            records=records,
        )
        before = len(self.backend.calls)
        run = executor.run(make_plan(p, stages))
        calls = [
            attrs.evolve(c, text=store.masker.mask(c.text), env={k: store.masker.mask(v) for k, v in c.env.items()})
            for c in self.backend.calls[before:]
        ]
        result = PipelineResult(run, calls, events, output.getvalue(), self.snapshot_dir, self.update_snapshots)
        result.artifacts = dict(records.artifacts)
        result.test_reports = dict(records.tests)
        self.results.append(result)
        return result
