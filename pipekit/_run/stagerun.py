"""One stage's life: its resource lock, attempts with their timeouts, retries, post actions, result.

A :class:`StageRun` runs in a worker thread (:meth:`execute`). The scheduler's thread controls
it from outside: :meth:`cancel` (fail-fast, interrupts, the run's deadline) and
:meth:`expire_if_due` (the attempt's own timeout) release the stage's handle, which ends a
running command promptly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

import attrs

from pipekit._core.results import StageResult, StageStatus
from pipekit._dsl.approval import Decision
from pipekit._dsl.control import Outcome, format_duration
from pipekit._dsl.matrix import MatrixOutputs, combination_key
from pipekit._plan.resolve import ResolvedStage
from pipekit._run.ahead import Ahead
from pipekit._run.context import Context
from pipekit._run.gates import EnvironmentLock
from pipekit._run.locks import ResourceLock
from pipekit._run.outputs import storable, take_cached, taken_result
from pipekit._run.posts import call_posts
from pipekit._run.run import Run
from pipekit._run.spec import stage_spec
from pipekit._run.usercode import error_text
from pipekit._workspace.sync import WorkspaceSync
from pipekit.backend import BuildSpec, Image, KeepsFailed, StageHandle, StageSpec
from pipekit.exceptions import EngineUnavailable, StageFailed, StepFailed

__all__ = ["ABANDON_GRACE_S", "StageRun"]

ABANDON_GRACE_S = 5.0  # how long a timed-out stage may take to notice before it is left behind

#: the level of a stage's "stage finished" line, by how it ended (else INFO)
_FINISHED_LEVELS = {StageStatus.FAILED: logging.ERROR, StageStatus.ALLOWED_FAILURE: logging.WARNING}


class _Stopped(Exception):
    """The stage was stopped before it started (while waiting for its resource)."""


@attrs.define
class _Attempt:
    status: StageStatus
    error: str | None = None
    value: Any = None
    exit_code: int | None = None
    spec: StageSpec | None = None
    ctx: Context | None = None


class StageRun:
    """Runs one stage of a run, from its cache lookup to its result."""

    def __init__(
        self,
        run: Run,
        resolved: ResolvedStage,
        outputs: Mapping[str, Any],
        ahead: Ahead | None = None,
        approval: Decision | None = None,
    ) -> None:
        self.ahead = ahead  # the stage's place, prepared while its upstream stages ran
        self.approval = approval  # the decision that opened the stage's gate (ctx.approval)
        self.run = run
        self.resolved = resolved
        self.name = resolved.name
        self.outputs = outputs
        self.log = run.log.bind(stage=self.name)
        self.backend = run.backend_for(resolved)
        self.cancelled = threading.Event()  # the whole stage is stopped
        self.attempt_stop = threading.Event()  # this attempt is stopped (also by its timeout)
        self.handle: StageHandle | None = None
        #: set once the stage's place is ready (or the stage has ended): what waits to prepare a
        #: downstream stage's place waits for this, so the two do not compete for the engine
        self.placed = threading.Event()
        self.cache_inputs: dict[str, Any] | None = None  # what the cache key was made of
        self.deadline: float | None = None
        self.attempt_started_at: float | None = None
        self.timed_out = False
        self.expired_at: float | None = None
        self.engine_lost = False  # the engine went away under this stage
        self._lock = threading.Lock()

    # -- control, from the scheduler's thread ---------------------------------------------
    def cancel(self) -> None:
        self.cancelled.set()
        self._release_quietly(self._take_handle(stop_attempt=True))

    def expire_if_due(self, now: float) -> None:
        with self._lock:
            due = self.deadline is not None and now >= self.deadline and not self.attempt_stop.is_set()
            if due:
                self.timed_out, self.expired_at = True, now
                self.attempt_stop.set()
                handle, self.handle = self.handle, None
        if due:
            self.log.warning("stage timed out")
            self._release_quietly(handle)

    def stuck_result(self, now: float) -> StageResult | None:
        """A failed result when the stage timed out but its Python code did not stop."""
        if self.expired_at is None or now - self.expired_at <= ABANDON_GRACE_S:
            return None
        error = (
            f"Stage '{self.name}' timed out after {format_duration(self.resolved.stage.timeout or 0)}; its Python code"
            " did not stop and was left running"
        )
        self.log.error("stage finished", status=StageStatus.FAILED, error=error)
        return StageResult(self.name, StageStatus.FAILED, error=error, timed_out=True, attempts=1)

    def _release_quietly(self, handle: StageHandle | None) -> None:
        if handle is None:
            return
        try:
            self.backend.release(handle)
        except Exception as e:  # never hide the stage's own outcome
            self.log.warning("cleanup failed", error=str(e))

    def _take_handle(self, *, stop_attempt: bool = False) -> StageHandle | None:
        """The stage's handle, taken under the lock: whoever takes it is the one who releases it."""
        with self._lock:
            if stop_attempt:
                self.attempt_stop.set()
            handle, self.handle = self.handle, None
        return handle

    def _release(self) -> None:
        self._release_quietly(self._take_handle())

    def _keep_or_release(self, status: StageStatus) -> None:
        """``--keep-failed``: a failed stage's container stays (``pipekit shell RUN STAGE``)."""
        if status == StageStatus.FAILED and self.run.keep_failed and self.backend.capabilities.keeps_failed:
            handle = self._take_handle()
            if handle is not None:
                try:
                    names = cast(KeepsFailed, self.backend).keep(handle)
                    self.log.warning(
                        "stage kept", container=names[0], enter=f"pipekit shell {self.run.run_id} {self.name}"
                    )
                except Exception as e:  # kept or not, the stage's own outcome is what counts
                    self.log.warning("stage not kept", error=str(e))
                    self._release_quietly(handle)
                return
        self._release_later()

    def _release_later(self) -> None:
        """The stage is done: its container goes in the background, off the critical path."""
        handle = self._take_handle()
        if handle is not None:
            self.run.releases.submit(lambda: self._release_quietly(handle))

    # -- the stage's life, in a worker thread ------------------------------------------------
    def execute(self) -> StageResult:
        try:
            return self._execute()
        finally:
            self.placed.set()  # whatever escapes, no stage prepared ahead waits on this one for ever

    def _execute(self) -> StageResult:
        started = self.run.clock()
        taken = take_cached(self.run, self.resolved, self.outputs)
        shared = taken.status is None and self.run.shared is not None
        if shared:
            with self.run.files.writing():  # a registry hit writes its declared output files
                taken = self.run.shared.restore(self.run, self.resolved, taken, self.log)
        key, self.cache_inputs = taken.key, taken.inputs
        if taken.inputs is not None and taken.inputs.get("files"):
            files = self.run.files  # counts for the whole run so far: each file is read at most once per run
            self.log.debug("cache inputs hashed", files=len(taken.inputs["files"]), run_hashed=files.hashed)
        if taken.status is not None:
            self.placed.set()
            self.log.info("stage finished", status=StageStatus.CACHED, duration_s=0.0, reason=taken.why)
            result = taken_result(self.name, taken, started, self.run.clock())
            # a registry hit's inputs are recorded with this run, which keeps it in the local cache
            return attrs.evolve(result, cache_inputs=taken.inputs) if shared else result
        if taken.why and taken.why != "cache miss":
            self.log.info("stage not cached", reason=taken.why)
        with self.run.files.writing():  # a stage that runs may change the files other keys are made of
            return self._run_stage(started, key)

    def _run_stage(self, started: float, key: str | None) -> StageResult:
        self.log.info("stage started", status=StageStatus.RUNNING, image=self.resolved.describe_image())
        s = self.resolved.stage
        lock = ResourceLock(s.resource) if s.resource else None
        held = EnvironmentLock(s.environment, self.run.run_id) if s.environment else None
        where = s.environment.name if s.environment else ""
        last, attempts, post_errors = _Attempt(StageStatus.CANCELLED), 0, []
        try:
            if held is not None and not held.acquire(
                self.cancelled, lambda: self.log.info("waiting for environment", environment=where)
            ):
                if held.superseded:
                    last.error = f"cancelled: a newer run waits to deploy to {where}"
                held = None
                raise _Stopped
            if lock is not None and not lock.acquire(
                self.cancelled, on_wait=lambda: self.log.info("waiting for resource", resource=s.resource)
            ):
                lock = None
                raise _Stopped
            if s.environment:
                self.run.gates.deploying(self.name, s.environment.name, self.approval)
            last, attempts = self._attempts()
            if s.post:
                outcome = Outcome(last.status, s.name, last.error, attempts, round(self.run.clock() - started, 3))
                post_errors = self._posts(last, outcome)
                if post_errors and last.status == StageStatus.SUCCEEDED:
                    last.status, last.error = StageStatus.FAILED, post_errors[0]
        except _Stopped:
            last.status = StageStatus.CANCELLED
        finally:
            self.placed.set()
            self._keep_or_release(last.status)
            if lock is not None:
                lock.release()
            if held is not None:
                self.run.gates.deployed(self.name, last.status)
                held.release()
        return self._result(last, attempts, started, key, post_errors)

    def _attempts(self) -> tuple[_Attempt, int]:
        s = self.resolved.stage
        attempts = 0
        while True:
            attempts += 1
            if attempts > 1:
                self.log.info("stage attempt started", attempt=attempts, of=s.retries + 1)
            last = self._attempt()
            if last.status == StageStatus.SUCCEEDED or self.cancelled.is_set() or attempts > s.retries:
                break
            delay = s.backoff * 2 ** (attempts - 1)
            self.log.warning("stage retrying", attempt=attempts, error=last.error, delay_s=delay)
            self._release()
            if delay and self.cancelled.wait(delay):
                break
        if self.cancelled.is_set():  # stopped: even a stage that caught its stop did not succeed
            last.status = StageStatus.CANCELLED
        elif last.status == StageStatus.FAILED and s.allow_failure:
            last.status = StageStatus.ALLOWED_FAILURE
        return last, attempts

    def _new_attempt(self) -> threading.Event:
        timeout = self.resolved.stage.timeout
        with self._lock:
            self.attempt_stop = threading.Event()
            if self.cancelled.is_set():
                self.attempt_stop.set()
            self.timed_out, self.expired_at, self.handle = False, None, None
            self.deadline = self.run.clock() + timeout if timeout else None
            return self.attempt_stop

    def _attempt(self) -> _Attempt:
        stop = self._new_attempt()
        self.attempt_started_at = time.time()  # ctx.junit reads no report older than this
        attempt = _Attempt(StageStatus.FAILED)
        try:
            attempt.spec = stage_spec(self.run, self.resolved, self._image(), self._service_images())
            if attempt.spec.placement and not self.backend.capabilities.places_stages:
                self.log.debug("placement ignored", placement=list(attempt.spec.placement), backend=self.backend.name)
            handle = self._take_ahead(attempt.spec) or self.backend.prepare(attempt.spec)
            with self._lock:
                self.handle = handle
            if self.backend.capabilities.places_stages:
                self.log.info("stage placed", where=handle.where)  # on a swarm: which node
            self.placed.set()
            if stop.is_set():
                raise StageFailed(f"Stage '{self.name}' was stopped", stage=self.name)
            sync = WorkspaceSync(self.backend, handle, self.run.resolved.workspace, self.log)
            sync.ship()
            attempt.ctx = self._context(attempt.spec, handle, stop, sync)
            try:
                attempt.value = self.resolved.stage.fn(**self._kwargs(attempt.ctx))
            except BaseException:
                self._bring_back(sync, stop, failed=True)
                raise
            self._bring_back(sync, stop)  # a copy-back that fails fails the stage
            attempt.status = StageStatus.SUCCEEDED
        except (Exception, SystemExit, KeyboardInterrupt) as e:
            # stage code that calls sys.exit() or raises KeyboardInterrupt fails its stage: it does
            # not end the run with a false exit code (a real Ctrl-C reaches the scheduler's thread)
            attempt.error = error_text(self.name, e)
            attempt.exit_code = e.returncode if isinstance(e, StepFailed) else None
            self.engine_lost = self.engine_lost or isinstance(e, EngineUnavailable)
        finally:
            if attempt.ctx is not None:
                attempt.ctx.docker.close()  # ctx.docker.run(detach=True)'s containers end with the attempt
        if self.timed_out:
            timeout = format_duration(self.resolved.stage.timeout or 0)
            attempt.status, attempt.error = StageStatus.FAILED, f"Stage '{self.name}' timed out after {timeout}"
        return attempt

    def _take_ahead(self, spec: StageSpec) -> StageHandle | None:
        """The handle prepared ahead, for the first attempt, when it was made for this very spec."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return None
        handle = ahead.take()
        if handle is not None and handle.spec != spec:  # it was made for something else: not ours
            self.run.releases.submit(lambda: self._release_quietly(handle))
            return None
        return handle

    def _bring_back(self, sync: WorkspaceSync, stop: threading.Event, *, failed: bool = False) -> None:
        if stop.is_set():
            return  # the stage's place is gone
        if not failed:
            sync.bring_back()
            return
        try:  # the stage failed already: its own error is the one to tell
            sync.bring_back()
        except Exception as e:
            self.log.warning("workspace not copied back", error=str(e))

    # -- what the stage gets ---------------------------------------------------------------
    def _image(self) -> str | None:
        s = self.resolved.stage
        if s.image_from:
            made = self.outputs.get(s.image_from)
            if not isinstance(made, Image):
                raise StageFailed(
                    f"Stage '{s.name}' runs in the image of stage '{s.image_from}', which returned"
                    f" {type(made).__name__}, not a pk.Image. Return ctx.docker.build(...) from '{s.image_from}'",
                    stage=s.name,
                )
            return made.remote or made.id
        if s.dockerfile:
            tag = self.resolved.build_tag
            self.log.info("image build started", dockerfile=s.dockerfile, tag=tag)
            spec = BuildSpec(
                run_id=self.run.run_id,
                stage=s.name,
                context=self.run.resolved.workspace,
                dockerfile=s.dockerfile,
                tag=tag,
                hidden=self.run.secrets.files,
                image_map=self.run.resolved.image_map,
            )
            image = self.run.images.build(spec, lambda stream, line: self.log.info("output", line=line, stream=stream))
            self.log.info("image built", image=image.id, tags=list(image.tags))
            return image.remote or image.id
        return self.resolved.image

    def _service_images(self) -> dict[str, str]:
        """The images the stages named by ``pk.Service(image=<stage>)`` built in this run."""
        s, out = self.resolved.stage, {}
        for name in s.service_images:
            made = self.outputs.get(name)
            if not isinstance(made, Image):
                services = ", ".join(svc.name for svc in s.services if svc.image_from == name)
                raise StageFailed(
                    f"Stage '{s.name}' starts service {services} from the image of stage '{name}', which"
                    f" returned {type(made).__name__}, not a pk.Image. Return ctx.docker.build(...) from '{name}'",
                    stage=s.name,
                )
            out[name] = made.remote or made.id
        return out

    def _context(
        self, spec: StageSpec, handle: StageHandle, stop: threading.Event, sync: WorkspaceSync | None = None
    ) -> Context:
        scope = self.run.scope_for(
            self.name,
            workspace=spec.workspace,
            env={**os.environ, **spec.all_env} if self.resolved.on_host else spec.all_env,
            log=self.log,
            started_at=self.attempt_started_at,
            matrix=self.resolved.stage.matrix_values or {},
            approval=self.approval,
        )
        return Context(scope, self.backend, handle, stop, sync.bring_back if sync and sync.active else None)

    def _kwargs(self, ctx: Context) -> dict[str, Any]:
        plan, s, outputs = self.run.resolved.plan, self.resolved.stage, self.outputs

        def value(name: str) -> Any:
            group = plan.groups.get(name)
            if group is None:
                return outputs.get(name)
            combos = {combination_key(plan.stage(n).matrix_values or {}): n for n in group}
            return MatrixOutputs(
                {key: outputs.get(n) for key, n in combos.items()},
                {key: plan.stage(n).matrix_values or {} for key, n in combos.items()},
            )

        kwargs = {p: value(p) for p in s.inputs}
        kwargs.update({p: value(p) for p in s.optional_inputs if p in outputs or p in plan.groups})
        if s.wants_context:
            kwargs[s.wants_context] = ctx
        return kwargs

    # -- after the work ----------------------------------------------------------------------
    def _posts(self, last: _Attempt, outcome: Outcome) -> list[str]:
        ctx = last.ctx
        if ctx is None or self.attempt_stop.is_set():
            # the stage's place is gone (timeout, stop) or never came: post actions get a fresh one
            self._release()
            fresh = last.spec or StageSpec(
                run_id=self.run.run_id, stage=self.name, image=None, workspace=self.run.resolved.workspace
            )
            try:
                handle = self.backend.prepare(fresh)
            except Exception as e:
                self.log.warning("post actions run on the host", error=str(e))
                self.backend = self.run.host
                handle = self.backend.prepare(attrs.evolve(fresh, image=None, services=()))
            with self._lock:
                self.handle = handle
            ctx = self._context(fresh, handle, threading.Event())
        return call_posts(self.resolved.stage.post, ctx, outcome, self.log)

    def _result(
        self, last: _Attempt, attempts: int, started: float, key: str | None, post_errors: list[str]
    ) -> StageResult:
        ok = last.status == StageStatus.SUCCEEDED
        output_json = storable(self.run, self.name, last.value, self.log) if ok else None
        finished = self.run.clock()
        duration = round(finished - started, 3)
        fields: dict[str, Any] = {"status": last.status, "duration_s": duration}
        if attempts > 1:
            fields["attempts"] = attempts
        if last.error:
            fields["error"] = last.error
        self.log.log(_FINISHED_LEVELS.get(last.status, logging.INFO), "stage finished", **fields)
        result = StageResult(
            name=self.name,
            status=last.status,
            duration_s=duration,
            started_at=started,
            finished_at=finished,
            error=last.error,
            output=last.value if ok else None,
            attempts=attempts,
            timed_out=self.timed_out,
            post_errors=tuple(post_errors),
            exit_code=last.exit_code,
            cache_key=key if ok else None,
            output_json=output_json,
            cache_inputs=self.cache_inputs if ok and key else None,
        )
        if self.run.shared is not None:
            self.run.shared.push(self.run, self.resolved, result, self.log)
        return result
