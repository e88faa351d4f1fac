"""The context a stage function receives as ``ctx``."""

from __future__ import annotations

import collections
import itertools
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from pipekit._archive import regular_files
from pipekit._cache import matching_files
from pipekit._conditions import glob_match
from pipekit._docker_ops import DockerOps
from pipekit._params import Params
from pipekit._reports import TestReport, parse_junit
from pipekit._secrets import Masker, Secret, SecretStore
from pipekit.backend import CommandResult, ImageBackend, StageBackend, StageHandle
from pipekit.exceptions import StageFailed, StepFailed

__all__ = ["Context", "MaskedRecords", "MemoryRecords", "StageRecords", "StageScope"]


class StageRecords(Protocol):
    """Where a stage's artifacts and test reports go (the run history, or memory)."""

    def add_artifact(self, stage: str, path: str, data: bytes) -> str: ...

    def add_tests(self, stage: str, report: TestReport) -> None: ...


class MemoryRecords:
    """Artifacts and test reports kept in memory (runs without a history, tests)."""

    def __init__(self) -> None:
        self.artifacts: dict[tuple[str, str], bytes] = {}
        self.tests: dict[str, TestReport] = {}
        self._lock = threading.Lock()

    def add_artifact(self, stage: str, path: str, data: bytes) -> str:
        import hashlib

        with self._lock:
            self.artifacts[(stage, path)] = data
        return hashlib.sha256(data).hexdigest()

    def add_tests(self, stage: str, report: TestReport) -> None:
        with self._lock:
            self.tests[stage] = report


class MaskedRecords:
    """Stage records with secrets masked on their way in: installed once by the run setup."""

    def __init__(self, inner: StageRecords, masker: Masker) -> None:
        self.inner = inner
        self._mask = masker.mask

    def add_artifact(self, stage: str, path: str, data: bytes) -> str:
        return self.inner.add_artifact(stage, self._mask(path), data)

    def add_tests(self, stage: str, report: TestReport) -> None:
        failed = tuple(attrs.evolve(f, name=self._mask(f.name), message=self._mask(f.message)) for f in report.failed)
        self.inner.add_tests(stage, attrs.evolve(report, failed=failed))


@attrs.frozen
class StageScope:
    """What a stage's :class:`Context` is made from: the run's parts as this stage sees them."""

    stage: str
    run_id: str
    workspace: Path
    env: Mapping[str, str] = attrs.field(repr=False)
    log: Any = attrs.field(repr=False)
    images: ImageBackend = attrs.field(repr=False)
    params: Params = attrs.field(factory=lambda: Params({}), repr=False)
    secrets: SecretStore = attrs.field(factory=SecretStore, repr=False)
    records: StageRecords = attrs.field(factory=lambda: MemoryRecords(), repr=False)
    matrix: Mapping[str, Any] = attrs.field(factory=dict)
    image_map: Mapping[str, str] = attrs.field(factory=dict)  # --image-map, for the FROM lines of builds


TAIL_LINES = 20


class Context:
    """What a stage sees of its run: ``sh``, ``env``, ``stage``, ``run_id``, ``workspace``, ``log``,
    ``params``, ``docker`` (build, tag, push, pull, run images) and ``secret(name)``."""

    def __init__(
        self,
        scope: StageScope,
        backend: StageBackend,
        handle: StageHandle,
        cancelled: threading.Event | None = None,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self.stage = scope.stage
        self.run_id = scope.run_id
        self.workspace = scope.workspace
        self.env: dict[str, str] = dict(scope.env)
        self._base_env = dict(scope.env)
        self.log = scope.log
        self.image = handle.spec.image
        self.params = scope.params
        self.matrix: Mapping[str, Any] = dict(scope.matrix)
        self._records = scope.records
        self._secrets = scope.secrets
        self._backend = backend
        self._handle = handle
        self._cancelled = cancelled or threading.Event()
        self._sync = sync or (lambda: None)
        self.commands: list[CommandResult] = []
        self.docker = DockerOps(scope, on_line=self._log_line, sync=self._sync)

    def _log_line(self, stream: str, line: str) -> None:
        self.log.info("output", line=line, stream=stream)

    def secret(self, name: str) -> str:
        """The value of a secret; it is masked in every log line from now on."""
        return self._secrets.get(name, stage=self.stage)

    def sh(
        self,
        command: str,
        env: Mapping[str, str | Secret] | None = None,
        check: bool = True,
        strict: bool = True,
    ) -> CommandResult:
        """Run ``sh -c command`` where the stage runs, streaming its output into the log.

        A multi-line command stops at its first failing line, and a pipeline (``a | b``) fails when
        any part fails where the shell supports ``pipefail``; ``strict=False`` runs the command as
        it is. Raises :class:`pipekit.StepFailed` on a non-zero exit unless ``check=False``.
        """
        if self._cancelled.is_set():
            raise StageFailed(f"Stage '{self.stage}' was stopped before `{command}`", stage=self.stage)
        call_env = self._secrets.resolve_env(env or {}, stage=self.stage)
        on_line = _Output(self.log)
        tail = on_line.tail
        self.log.info("command", command=command)
        exec_env = self._exec_env(call_env)
        result = self._backend.exec(self._handle, command, exec_env, on_line, strict=strict)
        self.commands.append(result)
        self.log.info(
            "command finished", command=command, exit_code=result.exit_code, duration_s=round(result.duration_s, 3)
        )
        if self._cancelled.is_set():
            raise StageFailed(f"Stage '{self.stage}' was stopped while `{command}` ran", stage=self.stage)
        if check and result.exit_code != 0:
            raise StepFailed(
                stage=self.stage,
                command=command,
                exit_code=result.exit_code,
                output_tail=list(tail),
                hint=_hint(result, self.image, self._handle.spec.memory),
            )
        return result

    def _files(self, patterns: tuple[str, ...]) -> list[tuple[str, bytes]]:
        """Files matching globs: relative to the workspace (read in the pipeline's folder, brought
        up to date first when the stage works on a copy), or absolute paths where the stage runs."""
        found: list[tuple[str, bytes]] = []
        relative = [p for p in patterns if not p.startswith("/")]
        if relative:
            self._sync()
        root = os.path.realpath(self.workspace)
        for path in matching_files(self.workspace, relative):
            name = path.relative_to(self.workspace).as_posix()
            real = os.path.realpath(path)
            if not real.startswith(root + os.sep):  # a file that comes out of a stage is untrusted
                raise StageFailed(
                    f"Stage '{self.stage}': {name} is a link to {real}, outside the workspace; pipekit does"
                    " not take files from outside it",
                    stage=self.stage,
                )
            found.append((name, path.read_bytes()))
        for pattern in (p for p in patterns if p.startswith("/")):
            parts = pattern.split("/")
            fixed = list(itertools.takewhile(lambda part: not any(c in part for c in "*?["), parts))
            base = "/".join(fixed) or "/"
            for rel, data in regular_files(self._backend.get_files(self._handle, base)):
                full = f"{base.rstrip('/')}/{rel}" if rel else base
                if full == pattern or glob_match(pattern, full):
                    found.append((full, data))
        return found

    def archive(self, *patterns: str) -> list[str]:
        """Keep files as the run's artifacts (``pipekit artifacts RUN`` fetches them): globs relative
        to the workspace, or absolute paths in the stage's container. Returns the paths archived."""
        archived = []
        for path, data in self._files(patterns):
            digest = self._records.add_artifact(self.stage, path, data)
            self.log.info("artifact archived", path=path, size=len(data), sha256=digest[:12])
            archived.append(path)
        if not archived:
            self.log.warning("no artifacts", patterns=list(patterns), reason="no file matched")
        return archived

    def junit(self, *patterns: str, fail_on_failure: bool = True) -> TestReport:
        """Read JUnit XML reports, keep their counts and failed tests in the run's record, print a
        summary, and (by default) fail the stage when tests failed, whatever the exit code was."""
        files = self._files(patterns)
        if not files:
            raise StageFailed(
                f"Stage '{self.stage}': no JUnit report matches {', '.join(patterns)}. Did the test command"
                " write one (pytest --junitxml=reports/junit.xml)?",
                stage=self.stage,
            )
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pipekit-junit-") as tmp:
            paths = []
            for i, (_name, data) in enumerate(files):
                p = Path(tmp) / f"{i}.xml"
                p.write_bytes(data)
                paths.append(p)
            try:
                report = parse_junit(paths)
            except ValueError as e:
                raise StageFailed(f"Stage '{self.stage}': {e}", stage=self.stage) from e
        report = attrs.evolve(report, files=tuple(name for name, _ in files))
        self._records.add_tests(self.stage, report)
        self.log.info("tests", summary=report.summary())
        for failed in report.failed:
            self.log.info("test failed", test=failed.name, message=failed.message)
        if fail_on_failure and not report.ok:
            names = ", ".join(f.name for f in report.failed[:5]) + (", ..." if len(report.failed) > 5 else "")
            raise StageFailed(
                f"{report.failures + report.errors} of {report.tests} tests failed in stage '{self.stage}': {names}",
                stage=self.stage,
            )
        return report

    def _exec_env(self, call_env: Mapping[str, str]) -> dict[str, str]:
        """What a command needs on top of the stage's environment (which the backend applies):
        the changes made to ``ctx.env`` during the stage, then the call's ``env=``."""
        changed = {k: v for k, v in self.env.items() if self._base_env.get(k) != v}
        return {**changed, **call_env}

    def __repr__(self) -> str:
        return f"<Context stage={self.stage!r} run_id={self.run_id!r}>"


def _hint(result: CommandResult, image: str | None, memory: int | None = None) -> str:
    if result.oom_killed:
        limit = _size(memory)
        return f"killed: out of memory (limit {limit}); give the stage more with resources=pk.Resources(memory=...)"
    where = f"image '{image}'" if image else "this machine's PATH"
    if result.exit_code == 127:
        return f"A command was not found in {where} (exit code 127: 'not found')."
    if result.exit_code == 126:
        return f"A command in {where} is not executable (exit code 126)."
    if result.exit_code == 137:
        return "The command was killed (exit code 137: SIGKILL, out of memory or the stage was stopped)."
    return ""


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, factor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} bytes"


class _Output:
    """Where a command's output goes: the stage's log (a batch at a time when the backend delivers
    batches) and the last lines kept for the error message."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._batch = getattr(log, "output_lines", None)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def __call__(self, stream: str, line: str) -> None:
        self.tail.append(line)
        self._log.info("output", line=line, stream=stream)

    def batch_lines(self, stream: str, lines: list[str]) -> None:
        self.tail.extend(lines[-TAIL_LINES:])
        if self._batch is not None:
            self._batch(stream, lines)
            return
        for line in lines:
            self._log.info("output", line=line, stream=stream)
