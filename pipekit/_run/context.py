"""The context a stage function receives as ``ctx``."""

from __future__ import annotations

import collections
import itertools
import os
import posixpath
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import attrs

from pipekit._backends.docker.engine import WORKDIR
from pipekit._core.safefile import PRIVATE, Beneath, UnsafePath
from pipekit._core.testreport import TestReport, parse_junit_data
from pipekit._core.util import EXIT_KILLED, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND
from pipekit._dsl.approval import Decision
from pipekit._dsl.conditions import glob_match
from pipekit._dsl.params import Params
from pipekit._dsl.secrets import Masker, Secret, SecretStore
from pipekit._run.image_ops import DockerOps
from pipekit._workspace.archive import regular_files
from pipekit.backend import CommandResult, ImageBackend, ScriptedWorkspace, StageBackend, StageHandle
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
        mask = self._mask
        failed = tuple(attrs.evolve(f, name=mask(f.name), message=mask(f.message)) for f in report.failed)
        cases = tuple(
            attrs.evolve(
                c,
                suite=mask(c.suite),
                classname=mask(c.classname),
                name=mask(c.name),
                message=mask(c.message),
                text=mask(c.text),
            )
            for c in report.cases
        )
        files = tuple(mask(f) for f in report.files)
        self.inner.add_tests(stage, attrs.evolve(report, failed=failed, cases=cases, files=files))


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
    #: when the stage's attempt started (``time.time()``); None: when the context is made
    started_at: float | None = None
    secrets: SecretStore = attrs.field(factory=SecretStore, repr=False)
    records: StageRecords = attrs.field(factory=lambda: MemoryRecords(), repr=False)
    matrix: Mapping[str, Any] = attrs.field(factory=dict)
    image_map: Mapping[str, str] = attrs.field(factory=dict)  # --image-map, for the FROM lines of builds
    approval: Any = None  # the Decision that opened the stage's gate; None: no gate


TAIL_LINES = 20
#: a report this much older than the stage's start is still its own (file systems and archives
#: that keep whole seconds, a remote engine's clock a little off)
STALE_SLACK_S = 2.0


class Context:
    """What a stage sees of its run: ``sh``, ``env``, ``stage``, ``run_id``, ``workspace``, ``log``,
    ``params``, ``approval``, ``docker`` (build, tag, push, pull, run images) and ``secret(name)``."""

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
        #: the decision that opened the stage's approval gate: ``.by``, ``.params``, ``.when``
        #: (``pk.Approval``, docs/approvals.md); None for a stage without a gate
        self.approval: Decision | None = scope.approval
        self._records = scope.records
        self._secrets = scope.secrets
        self._backend = backend
        self._handle = handle
        self._cancelled = cancelled or threading.Event()
        self._sync = sync or (lambda: None)
        self.commands: list[CommandResult] = []
        #: when the stage (this attempt) started, wall clock: ctx.junit reads no older report
        self.started_at = scope.started_at if scope.started_at is not None else time.time()
        self.docker = DockerOps(scope, on_line=self._log_line, sync=self._sync, place=handle)

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

    def _files(self, patterns: tuple[str, ...], fresh: bool = False) -> list[tuple[str, bytes]]:
        """Files matching globs: relative to the workspace (read in the pipeline's folder, brought
        up to date first when the stage works on a copy; under the test runner, the fake backend's
        files), or absolute paths where the stage runs. ``fresh``: only files written since the
        stage started."""
        found: list[tuple[str, bytes]] = []
        relative = [p for p in patterns if not p.startswith("/")]
        if relative:
            self._sync()
            found += self._workspace_files(relative, fresh)
        for pattern in (p for p in patterns if p.startswith("/")):
            self._refuse_private(pattern, pattern)
            parts = pattern.split("/")
            fixed = list(itertools.takewhile(lambda part: not any(c in part for c in "*?["), parts))
            base = "/".join(fixed) or "/"
            for rel, data in regular_files(self._backend.get_files(self._handle, base)):
                full = f"{base.rstrip('/')}/{rel}" if rel else base
                if self._private_path(full) is not None:
                    continue  # .pipekit/ and .git/ are left out of a folder or glob, as in the workspace
                if full == pattern or glob_match(pattern, full):
                    found.append((full, data))
        return found

    def _workspace_files(self, patterns: list[str], fresh: bool) -> list[tuple[str, bytes]]:
        """Each file read once from a descriptor opened without following a link out of the
        workspace (:class:`pipekit._core.safefile.Beneath`): a stage cannot swap in a link in between."""
        scripted = self._backend.capabilities.scripted_files
        root = cast(ScriptedWorkspace, self._backend).workspace_view(self._handle) if scripted else self.workspace
        found: list[tuple[str, bytes]] = []
        stale: list[tuple[str, float]] = []
        try:
            # the secrets files read for the run (SecretStore.files) are never handed out either
            with Beneath(root, hidden=getattr(self._secrets, "files", ())) as tree:
                for pattern in patterns:
                    self._refuse_private(pattern, pattern)
                for name in tree.matching(patterns, glob_match):
                    data, st = tree.read(name)
                    if fresh and st.st_mtime < self.started_at - STALE_SLACK_S:
                        stale.append((name, st.st_mtime))
                        continue
                    found.append((name, data))
        except UnsafePath as e:  # a file that comes out of a stage is untrusted
            raise StageFailed(
                f"Stage '{self.stage}': {e}; pipekit does not take files from outside the workspace, nor"
                " from .pipekit/, .git/ or the secrets file",
                stage=self.stage,
            ) from e
        except OSError as e:
            where = e.filename or root
            raise StageFailed(f"Stage '{self.stage}': cannot read {where}: {e.strerror}", stage=self.stage) from e
        for name, mtime in stale:
            started = _clock(self.started_at)
            self.log.warning("stale report not read", path=name, written=_clock(mtime), stage_started=started)
        if stale and not found:
            name, mtime = stale[0]
            raise StageFailed(
                f"Stage '{self.stage}': the report {name} is stale: it was written at {_clock(mtime)}, before this"
                f" stage started at {_clock(self.started_at)} (a report of an earlier run?). ctx.junit reads only"
                " reports written by the stage's own commands: did the test command run and write it?",
                stage=self.stage,
            )
        return found

    def _private_path(self, path: str) -> str | None:
        """``.pipekit`` or ``.git`` when an absolute path is in pipekit's own state or git's (in a
        container, or here for a stage without an image); None otherwise."""
        norm = posixpath.normpath(path)
        roots = {WORKDIR, os.path.abspath(self.workspace), os.path.realpath(self.workspace)}
        real = os.path.realpath(norm) if self._handle.spec.image is None else norm
        for root, name, p in itertools.product(roots, PRIVATE, (norm, real)):
            if p.lower() == f"{root}/{name}" or p.lower().startswith(f"{root}/{name}/"):
                return name
        return None

    def _refuse_private(self, pattern: str, shown: str) -> None:
        first = posixpath.normpath(pattern).split("/")[0].lower()
        private = self._private_path(pattern) if pattern.startswith("/") else first if first in PRIVATE else None
        if private is not None:
            raise StageFailed(
                f"Stage '{self.stage}': {shown} is under {private}/, which pipekit never hands to a stage"
                " (ctx.archive and ctx.junit refuse it)",
                stage=self.stage,
            )

    def archive(self, *patterns: str) -> list[str]:
        """Keep files as the run's artifacts (``pipekit artifacts RUN`` fetches them): globs relative
        to the workspace, or absolute paths in the stage's container. Returns the paths archived.
        Nothing under ``.pipekit/`` or ``.git/`` is archived, and links are followed only inside the
        workspace."""
        archived = []
        for path, data in self._files(patterns):
            digest = self._records.add_artifact(self.stage, path, data)
            self.log.info("artifact archived", path=path, size=len(data), sha256=digest[:12])
            archived.append(path)
        if not archived and self._fake_hint():  # a test that forgot to script the files
            raise StageFailed(
                f"Stage '{self.stage}': ctx.archive found no file matching {', '.join(patterns)}.{self._fake_hint()}",
                stage=self.stage,
            )
        if not archived:
            self.log.warning("no artifacts", patterns=list(patterns), reason="no file matched")
        return archived

    def junit(self, *patterns: str, fail_on_failure: bool = True) -> TestReport:
        """Read JUnit XML reports, keep their counts and failed tests in the run's record, print a
        summary, and (by default) fail the stage when tests failed, whatever the exit code was.
        Reports written before the stage started are stale and not read."""
        files = self._files(patterns, fresh=True)
        if not files:
            raise StageFailed(
                f"Stage '{self.stage}': no JUnit report matches {', '.join(patterns)}. Did the test command"
                " write one (pytest --junitxml=reports/junit.xml)?" + self._fake_hint(),
                stage=self.stage,
            )
        try:
            report = parse_junit_data(files)
        except ValueError as e:
            raise StageFailed(f"Stage '{self.stage}': {e}", stage=self.stage) from e
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

    def _fake_hint(self) -> str:
        if not self._backend.capabilities.scripted_files:
            return ""
        return f" {cast(ScriptedWorkspace, self._backend).files_hint}"

    def _exec_env(self, call_env: Mapping[str, str]) -> dict[str, str]:
        """What a command needs on top of the stage's environment (which the backend applies):
        the changes made to ``ctx.env`` during the stage, then the call's ``env=``."""
        changed = {k: v for k, v in self.env.items() if self._base_env.get(k) != v}
        return {**changed, **call_env}

    def __repr__(self) -> str:
        return f"<Context stage={self.stage!r} run_id={self.run_id!r}>"


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _hint(result: CommandResult, image: str | None, memory: int | None = None) -> str:
    if result.oom_killed:
        limit = _size(memory)
        return f"killed: out of memory (limit {limit}); give the stage more with resources=pk.Resources(memory=...)"
    where = f"image '{image}'" if image else "this machine's PATH"
    if result.exit_code == EXIT_NOT_FOUND:
        return f"A command was not found in {where} (exit code 127: 'not found')."
    if result.exit_code == EXIT_NOT_EXECUTABLE:
        return f"A command in {where} is not executable (exit code 126)."
    if result.exit_code == EXIT_KILLED:
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
