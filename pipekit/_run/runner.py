"""Running a set-up run (:func:`run_setup`): backends, history, resume and cache, then the scheduler.

:func:`execute` sets a request up (``_run/session.py``) and runs it. This module imports the
session, never the other way round."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from pipekit._core.results import RunResult
from pipekit._core.statcache import FileDigests
from pipekit._core.util import write_file
from pipekit._dsl.conditions import glob_filter
from pipekit._plan.preflight import check as preflight
from pipekit._run.context import MaskedRecords, MemoryRecords, StageRecords
from pipekit._run.gates import Gates
from pipekit._run.run import CacheLookup, Run, RunObserver
from pipekit._run.scheduler import Scheduler
from pipekit._run.session import RunRequest, RunSetup, container_backend, setup
from pipekit.backend import Sweeps
from pipekit.exceptions import UsageError

if TYPE_CHECKING:
    from pipekit._ci.junit import CiReport
    from pipekit._history.store import History
    from pipekit._plan.resolve import ResolvedPlan
    from pipekit._run.sharedcache import SharedCache

__all__ = ["container_backend", "execute", "open_history", "run_setup"]


def execute(request: RunRequest) -> RunResult:
    """Set up and run: what ``pipekit run``, ``pk.run`` and the test runner all do."""
    return run_setup(setup(request))


def open_history(workspace: Path, backend: Any = None, warn: Any = None, *, create: bool = True) -> Any:
    """The workspace's run history, with runs whose process died marked interrupted (and what
    they left removed, when the backend answers). ``create=False``: a UsageError when there is none."""
    from pipekit._history.store import History
    from pipekit.exceptions import BackendError

    history = History(workspace, warn=warn, create=create)
    if backend is None:
        backend = container_backend()
    try:
        backend.check()
        cleanup = backend.cleanup
    except BackendError:
        cleanup = None
    history.reap(cleanup=cleanup)
    return history


@attrs.define
class _Recording:
    """What recording a run in the history adds to it."""

    observers: list[Any] = attrs.field(factory=list)
    processors: list[Any] = attrs.field(factory=list)
    records: StageRecords | None = None
    cache: CacheLookup | None = None
    restore: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    history: Any = None
    resumed_from: str | None = None


def _recording(setup: RunSetup, backend: Any) -> _Recording:
    from pipekit._history.recorder import HistoryRecorder, Unfailing, redact_argv
    from pipekit._history.store import HistoryUnwritable

    r = setup.request
    try:
        history = open_history(setup.workspace, backend, r.warn)
    except HistoryUnwritable as e:
        if r.resume is not None:
            raise  # --resume needs the history
        (r.warn or (lambda message: None))(f"{e.message}; the run goes on without being recorded")
        return _Recording()
    rec = _Recording(history=history)
    try:
        resumed_from, rec.restore = setup.resumed(history)
        rec.resumed_from = resumed_from
    except BaseException:
        history.close()
        raise
    recorder = Unfailing(
        HistoryRecorder(
            history,
            argv=redact_argv(["pipekit", *r.argv], setup.secrets.masker.mask),
            branch=setup.info.branch,
            resumed_from=resumed_from,
            params=setup.secrets.masker.mask_any({k: str(v) for k, v in setup.params.items()}),
            checkout=Path(setup.pipeline.path).parent if setup.pipeline.path else None,
        ),
        r.warn or (lambda message: None),
    )
    rec.observers.append(recorder)
    rec.records = recorder
    rec.processors.append(recorder.log_processor(setup.run_id))
    rec.cache = history.cache_get if r.use_cache else None
    return rec


def _host_backend(given: Any, backend: Any) -> Any:
    if given is not None:
        return given
    if backend.capabilities.runs_host_stages:
        return backend
    from pipekit._backends.host import HostBackend

    return HostBackend()


def _sweep(backend: Any) -> threading.Thread | None:
    """Remove what lost runs left (a kill -9, an engine that was down), beside the run rather than
    before its first container; the run waits for it before it ends."""
    if not isinstance(backend, Sweeps):
        return None

    def sweep() -> None:
        try:
            backend.sweep()
        except Exception:  # the engine went away: the run finds out where it uses it
            pass

    thread = threading.Thread(target=sweep, name="pipekit-sweep", daemon=True)
    thread.start()
    return thread


def run_setup(setup: RunSetup, observers: Sequence[RunObserver] = ()) -> RunResult:
    """Run a set-up request to its end and return how it ended."""
    r = setup.request
    backend = setup.backend
    timeout = setup.timeout
    _ = setup.plan  # raises the first pipeline error, before anything is checked or recorded
    decided = setup.pre_approvals()  # --approve: checked before anything starts
    # the files the stage cache will ask for are on their way while the history and the engine
    # are opened (a --resume run knows what it restores only once the history is open)
    early = None
    if r.resume is None:
        try:
            early = setup.resolved({})
        except Exception:  # raised again below, once the run is recorded
            early = None
    files = _fingerprints(early) if early is not None else None
    rec = _recording(setup, backend) if r.record else _Recording()
    sweep = None
    shared = None
    try:
        shared = shared_cache(setup, rec.history)
        resolved = early if early is not None and not rec.restore else setup.resolved(rec.restore)
        if files is None or resolved is not early:
            files = _fingerprints(resolved)
        if resolved.needs_container_backend:
            backend.check()
            sweep = _sweep(backend)
        check_images = r.check_images and resolved.needs_container_backend
        preflight(resolved, setup.secrets, backend if check_images else None, backend, r.warn)
        report = _ci_report(rec.records or r.records or MemoryRecords(), setup) if r.junit or r.ci == "github" else None
        run = _make_run(setup, rec, resolved, shared, files, decided, report, observed=bool(observers))
        extra = [report] if report is not None else []
        scheduler = Scheduler(
            run, jobs=r.jobs, fail_fast=r.fail_fast, timeout=timeout, observers=[*rec.observers, *observers, *extra]
        )
        result = None
        try:
            result = scheduler.execute()
            if shared is not None:  # every push is done: the index of what this run took or pushed
                shared.finish(run.log)
        finally:
            if report is not None:
                _ci_outputs(setup, report, result)
        return result
    finally:
        if shared is not None:
            shared.cache.close()
        if sweep is not None:
            sweep.join()
        setup.close_view()
        if rec.history is not None:
            try:
                _write_report(setup, rec.history)
            finally:
                rec.history.close()


def _make_run(
    setup: RunSetup,
    rec: _Recording,
    resolved: ResolvedPlan,
    shared: SharedCache | None,
    files: FileDigests,
    decided: dict[str, Any],
    report: CiReport | None,
    *,
    observed: bool,
) -> Run:
    """The run's state, from its setup and what the run's start made (history, cache, gates...)."""
    r = setup.request
    backend = setup.backend
    records = report or rec.records or r.records or MemoryRecords()
    return Run(
        run_id=setup.run_id,
        resolved=resolved,
        backend=backend,
        host=_host_backend(r.host, backend),
        images=backend,
        secrets=setup.secrets,
        params=setup.params,
        records=MaskedRecords(_captured(shared, records), setup.secrets.masker),
        log=setup.logger(rec.processors),
        cache=rec.cache,
        record_outputs=r.record or observed,
        clock=r.clock or time.monotonic,
        keep_failed=r.keep_failed,
        shared=shared,
        files=files,
        gates=Gates(
            setup.run_id, history=rec.history, resumed_from=rec.resumed_from, decided=decided, prompter=r.prompter
        ),
    )


def shared_cache(setup: RunSetup, history: History | None = None) -> SharedCache | None:
    """The run's shared cache (``--cache-registry``), None without one, with ``off`` or ``--no-cache``;
    its hits are kept in ``history``'s local cache."""
    from pipekit._history.remote import MODES
    from pipekit._run.sharedcache import SharedCache, cache_login, open_shared_cache

    r = setup.request
    mode = r.cache_mode or ("read" if r.cache_registry else "off")
    if mode not in MODES:
        raise UsageError(f"--cache-mode {mode!r} is not one of {', '.join(MODES)}")
    if not r.cache_registry or mode == "off" or not r.use_cache:
        return None
    auth = cache_login(setup.secrets, r.cache_credentials)
    shared = SharedCache(open_shared_cache(r.cache_registry, mode, auth), auth=auth)
    shared.start(setup.plan.pipeline.name)
    if history is not None:
        shared.remember = history.cache_put
    return shared


def _captured(shared: SharedCache | None, records: StageRecords) -> StageRecords:
    """The records, kept per stage too when the run pushes cache entries (their artifacts, tests)."""
    if shared is None or not shared.cache.writes:
        return records
    from pipekit._run.sharedcache import CapturedRecords

    shared.captured = CapturedRecords(records)
    return shared.captured


def _fingerprints(resolved: ResolvedPlan) -> FileDigests:
    """The run's file fingerprints, those the stage cache will ask for already on their way."""
    files = FileDigests(resolved.workspace)
    wanted = [
        r.stage.cache.files for r in resolved.stages.values() if r.stage.cache and r.skip is None and not r.restore
    ]
    files.prefetch(wanted, glob_filter)
    return files


def _ci_report(records: Any, setup: RunSetup) -> CiReport:
    from pipekit._ci.junit import CiReport

    return CiReport(records, setup.secrets.masker.mask)


def _ci_outputs(setup: RunSetup, report: CiReport, result: RunResult | None) -> None:
    """The JUnit file and GitHub's job summary, also for a run that was interrupted (``result``
    None: the stages that ended by then)."""
    from pipekit._ci.junit import github_summary, junit_xml

    r = setup.request
    name = setup.pipeline.name
    if r.junit:
        stages = result.stages if result is not None else report.stages
        try:
            write_file(r.junit, junit_xml(name, setup.run_id, stages, report), root=setup.workspace)
        except OSError as e:  # a link a stage left on the way (UnsafePath) says so in its strerror
            raise UsageError(f"Cannot write the JUnit file {r.junit}: {e.strerror}") from e
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if r.ci == "github" and summary and result is not None:
        try:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(github_summary(result, report))
        except OSError as e:
            (r.warn or (lambda message: None))(f"cannot write the job summary to {summary}: {e.strerror}")


def _write_report(setup: RunSetup, history: Any) -> None:
    """``--report``: the run's page, whatever its outcome (the history has every stage by now)."""
    r = setup.request
    if not r.report:
        return
    from pipekit._report.page import write_report

    try:
        write_report(history, setup.run_id, r.report)
    except Exception as e:  # a report that cannot be written never hides the run's own outcome
        (r.warn or (lambda message: None))(f"the report was not written to {r.report}: {e}")
