"""The executor: starts each stage the moment its last dependency has succeeded.

Per stage (in a worker thread): wait for its resource lock, then up to ``retries + 1`` attempts
of prepare → call the stage function → (on failure) release and retry, then the post actions,
then release. The main thread schedules, enforces timeouts, and handles failures and interrupts.
"""

from __future__ import annotations

import heapq
import os
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any, Protocol

import attrs

from pipekit._cache import stage_key
from pipekit._conditions import RunInfo
from pipekit._context import Context, MemoryRecords, StageRecords
from pipekit._control import POST_WHEN, Outcome, format_duration
from pipekit._graph import Plan
from pipekit._locks import ResourceLock
from pipekit._logging import Processor, make_logger
from pipekit._matrix import MatrixOutputs, combination_key
from pipekit._params import Params, resolve_params
from pipekit._secrets import SecretStore
from pipekit._serialize import NotSerializable, dumps, loads
from pipekit._stage import Stage
from pipekit.backend import Backend, BuildSpec, Image, ServiceSpec, StageHandle, StageSpec
from pipekit.exceptions import PipekitError, StageCodeError, StageFailed, StepFailed

__all__ = ["Executor", "RunResult", "StageResult", "new_run_id"]

SUCCEEDED, FAILED, SKIPPED, CANCELLED = "succeeded", "failed", "skipped", "cancelled"
ALLOWED_FAILURE = "allowed_failure"
CACHED, RESTORED = "cached", "restored"
#: statuses after which dependents run and the run can succeed
DONE_OK = (SUCCEEDED, CACHED, RESTORED)
INTERRUPTED = "interrupted"
STOP_GRACE_S = 10.0
ABANDON_GRACE_S = 5.0  # how long a timed-out stage may take to notice before it is left behind
_PIPEKIT_DIR = os.path.dirname(os.path.abspath(__file__))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.") or "x"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@attrs.frozen
class StageResult:
    """How one stage of a run ended.

    ``status`` is succeeded, failed, allowed_failure, skipped or cancelled; ``reason`` says why a
    stage was skipped; ``attempts`` counts runs of the stage (more than 1 after retries).
    """

    name: str
    status: str
    duration_s: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    reason: str | None = None
    output: Any = attrs.field(default=None, eq=False, repr=False)
    attempts: int = 0
    timed_out: bool = False
    post_errors: tuple[str, ...] = ()
    exit_code: int | None = None
    cache_key: str | None = attrs.field(default=None, repr=False)
    output_json: str | None = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen
class RunResult:
    """How a run ended: its status, each stage's result, and the order stages started in."""

    run_id: str
    pipeline: str
    status: str
    stages: Mapping[str, StageResult]
    started: tuple[str, ...]
    duration_s: float
    warnings: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return 0 if self.status == SUCCEEDED else 1

    def __getitem__(self, stage: str) -> StageResult:
        return self.stages[stage]


class RunObserver(Protocol):
    """Told about a run as it goes (the run history implements it)."""

    def run_started(self, run_id: str, plan: Plan) -> None: ...

    def stage_started(self, run_id: str, name: str, position: int) -> None: ...

    def stage_finished(self, run_id: str, result: StageResult, position: int) -> None: ...

    def run_finished(self, run_id: str, result: RunResult) -> None: ...


#: Looks a cache key up: (the run that stored it, the stored output as JSON), or None.
CacheLookup = Callable[[str], "tuple[str, str] | None"]


def _user_traceback(exc: BaseException) -> str:
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(f.filename).startswith(_PIPEKIT_DIR + os.sep)
    ]
    text = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    text.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(text)


def _error_text(name: str, e: BaseException) -> str:
    if isinstance(e, PipekitError):
        return e.message
    return StageCodeError(stage=name, error=e, traceback=_user_traceback(e)).message


class _Running:
    """A stage in flight: its cancel flags, its current handle, its attempt's deadline."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()  # the whole stage is stopped (fail-fast, interrupt, run timeout)
        self.attempt_stop = threading.Event()  # this attempt is stopped (also by its timeout)
        self.handle: StageHandle | None = None
        self.deadline: float | None = None
        self.timeout: float | None = None
        self.timed_out = False
        self.expired_at: float | None = None  # when the main thread stopped the attempt for its timeout
        self.lock = threading.Lock()

    def new_attempt(self, timeout: float | None, now: float) -> threading.Event:
        with self.lock:
            self.attempt_stop = threading.Event()
            if self.cancelled.is_set():
                self.attempt_stop.set()
            self.timed_out = False
            self.expired_at = None
            self.timeout = timeout
            self.handle = None
            self.deadline = now + timeout if timeout else None
            return self.attempt_stop


class Executor:
    """Runs a :class:`Plan` on a :class:`Backend`, ``jobs`` stages at a time."""

    def __init__(
        self,
        backend: Backend,
        *,
        jobs: int = 4,
        fail_fast: bool = False,
        log_format: str = "console",
        log_file: IO[str] | None = None,
        log_level: int = 20,
        log_processors: Sequence[Processor] = (),
        image_map: Mapping[str, str] | None = None,
        params: Params | None = None,
        secrets: SecretStore | None = None,
        run_info: RunInfo | None = None,
        run_timeout: float | None = None,
        workspace: Path | None = None,
        observers: Sequence[RunObserver] = (),
        cache: CacheLookup | None = None,
        restore: Mapping[str, tuple[str, str]] | None = None,
        record_outputs: bool = False,
        records: StageRecords | None = None,
        run_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.backend = backend
        self.jobs = jobs
        self.fail_fast = fail_fast
        self.secrets = secrets if secrets is not None else SecretStore()
        # the masker runs first, so no processor or renderer ever sees a secret
        self.log = make_logger(
            log_format, file=log_file, level=log_level, processors=[self.secrets.masker, *log_processors]
        )
        self.image_map = dict(image_map or {})
        self.params = params
        self.run_info = run_info
        self.run_timeout = run_timeout
        self.workspace = workspace
        self.observers = list(observers)
        self.cache = cache
        self.restore = dict(restore or {})
        self.record_outputs = record_outputs or bool(self.observers)
        self.records = records if records is not None else MemoryRecords()
        self.run_id = run_id or new_run_id()
        self.clock = clock
        self.sleep = sleep

    # -- where a stage runs ---------------------------------------------------------------
    def _workspace(self, plan: Plan) -> Path:
        """The pipeline file's folder; for a pipeline made in code, the given workspace or the cwd."""
        if plan.pipeline.path:
            return Path(plan.pipeline.path).parent
        return self.workspace or Path.cwd()

    def _image(self, plan: Plan, s: Stage, outputs: Mapping[str, Any], log: Any) -> str | None:
        """The image the stage runs in: named (after --image-map), another stage's, or built."""
        pipeline = plan.pipeline
        if s.image_from:
            made = outputs.get(s.image_from)
            if not isinstance(made, Image):
                raise StageFailed(
                    f"Stage '{s.name}' runs in the image of stage '{s.image_from}', which returned"
                    f" {type(made).__name__}, not a pk.Image. Return ctx.docker.build(...) from '{s.image_from}'",
                    stage=s.name,
                )
            return made.id
        if s.dockerfile:
            tag = f"pipekit-dockerfile/{_slug(pipeline.name)}-{_slug(s.group or s.name)}:latest"
            log.info("image build started", dockerfile=s.dockerfile, tag=tag)
            image = self.backend.build(
                BuildSpec(
                    run_id=self.run_id, stage=s.name, context=self._workspace(plan), dockerfile=s.dockerfile, tag=tag
                ),
                lambda stream, line: log.info("output", line=line, stream=stream),
            )
            log.info("image built", image=image.id, tags=list(image.tags))
            return image.id
        named = pipeline.image_for(s)
        return self.image_map.get(named, named) if named is not None else None

    def _spec(self, plan: Plan, s: Stage, outputs: Mapping[str, Any], log: Any) -> StageSpec:
        services = tuple(
            ServiceSpec(
                name=svc.name,
                image=self.image_map.get(svc.image, svc.image),
                command=svc.command,
                env=self.secrets.resolve_env(svc.env, stage=s.name),
                healthcheck=svc.healthcheck,
                healthcheck_timeout=svc.healthcheck_timeout,
            )
            for svc in s.services
        )
        return StageSpec(
            run_id=self.run_id,
            stage=s.name,
            image=self._image(plan, s, outputs, log),
            workspace=self._workspace(plan),
            env=self.secrets.resolve_env(plan.pipeline.env_for(s), stage=s.name),
            services=services,
            volumes={self._cache_volume(plan, s, path): path for path in s.cache_dirs},
        )

    def _cache_volume(self, plan: Plan, s: Stage, path: str) -> str:
        """The named volume that keeps ``path`` of this stage across runs (one per pipeline, stage, path)."""
        import hashlib

        digest = hashlib.sha256(f"{plan.pipeline.path}\0{s.group or s.name}\0{path}".encode()).hexdigest()[:10]
        return f"pipekit-cache-{_slug(plan.pipeline.name)[:20]}-{_slug(s.group or s.name)[:20]}-{digest}"

    def _context(self, s: Stage, spec: StageSpec, handle: StageHandle, log: Any, stop: threading.Event) -> Context:
        return Context(
            stage=s.name,
            run_id=self.run_id,
            workspace=spec.workspace,
            env={**os.environ, **spec.env} if spec.image is None else spec.env,
            log=log,
            backend=self.backend,
            handle=handle,
            cancelled=stop,
            params=self.params,
            secrets=self.secrets,
            matrix=s.matrix_values,
            records=self.records,
        )

    def _inputs(self, plan: Plan, s: Stage, outputs: Mapping[str, Any]) -> dict[str, Any]:
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
        return kwargs

    # -- one stage ------------------------------------------------------------------------
    def _attempt(
        self, plan: Plan, s: Stage, outputs: Mapping[str, Any], state: _Running, log: Any
    ) -> tuple[str, str | None, Any, StageSpec | None, Context | None, int | None]:
        stop = state.new_attempt(s.timeout, self.clock())
        spec: StageSpec | None = None
        ctx: Context | None = None
        exit_code: int | None = None
        try:
            spec = self._spec(plan, s, outputs, log)
            handle = self.backend.prepare(spec)
            with state.lock:
                state.handle = handle
            if stop.is_set():
                raise StageFailed(f"Stage '{s.name}' was stopped", stage=s.name)
            ctx = self._context(s, spec, handle, log, stop)
            kwargs = self._inputs(plan, s, outputs)
            if s.wants_context:
                kwargs[s.wants_context] = ctx
            value = s.fn(**kwargs)
            status, error = SUCCEEDED, None
        except Exception as e:
            status, error, value = FAILED, _error_text(s.name, e), None
            exit_code = e.returncode if isinstance(e, StepFailed) else None
        if state.timed_out:
            status, error = FAILED, f"Stage '{s.name}' timed out after {format_duration(s.timeout or 0)}"
        return status, error, value, spec, ctx, exit_code

    def _release(self, state: _Running, log: Any) -> None:
        with state.lock:
            handle, state.handle = state.handle, None
        if handle is not None:
            try:
                self.backend.release(handle)
            except Exception as e:  # never hide the stage's own outcome
                log.warning("cleanup failed", error=str(e))

    def _cache_key(self, plan: Plan, s: Stage, outputs: Mapping[str, Any], log: Any) -> str | None:
        """The stage's cache key, or None when one cannot be made (the stage then just runs)."""
        if s.cache is None:
            return None
        try:
            if s.image_from:
                made = outputs.get(s.image_from)
                image = made.id if isinstance(made, Image) else None
            elif s.dockerfile:
                image = "dockerfile:" + (self._workspace(plan) / s.dockerfile).read_text()
            else:
                named = plan.pipeline.image_for(s)
                image = self.backend.image_id(self.image_map.get(named, named)) if named else None
            upstream = {d: dumps(outputs.get(d)) for d in plan.upstream(s.name)}
        except (NotSerializable, OSError, PipekitError) as e:
            log.info("stage not cached", reason=str(e))
            return None
        return stage_key(
            pipeline=plan.pipeline.name,
            stage=s.name,
            fn=s.fn,
            image=image,
            env=plan.pipeline.env_for(s),
            params=dict(self.params or {}),
            upstream=upstream,
            spec=s.cache,
            workspace=self._workspace(plan),
            environ=os.environ,
            matrix=s.matrix_values,
        )

    def _run_stage(self, plan: Plan, name: str, outputs: Mapping[str, Any], state: _Running) -> StageResult:
        s = plan.stage(name)
        log = self.log.bind(stage=name)
        started = self.clock()
        cache_key = self._cache_key(plan, s, outputs, log)
        if cache_key and self.cache is not None:
            hit = self.cache(cache_key)
            if hit is not None:
                from_run, stored = hit
                reason = f"cache hit: result of run {from_run}"
                log.info("stage finished", status=CACHED, duration_s=0.0, reason=reason)
                return StageResult(
                    name,
                    CACHED,
                    0.0,
                    started,
                    self.clock(),
                    None,
                    reason,
                    loads(stored),
                    cache_key=cache_key,
                    output_json=stored,
                )
        log.info("stage started", status="running", image=plan.pipeline.describe_image(s))
        lock = ResourceLock(s.resource) if s.resource else None
        status: str = CANCELLED
        error: str | None = None
        value: Any = None
        attempts = 0
        timed_out = False
        exit_code: int | None = None
        post_errors: list[str] = []
        try:
            if lock is not None and not lock.acquire(
                state.cancelled, on_wait=lambda: log.info("waiting for resource", resource=s.resource)
            ):
                lock = None
                raise _Stopped
            spec, ctx = None, None
            while True:
                attempts += 1
                if attempts > 1:
                    log.info("stage attempt started", attempt=attempts, of=s.retries + 1)
                status, error, value, spec, ctx, exit_code = self._attempt(plan, s, outputs, state, log)
                timed_out = state.timed_out
                if status == SUCCEEDED or state.cancelled.is_set() or attempts > s.retries:
                    break
                delay = s.backoff * 2 ** (attempts - 1)
                log.warning("stage retrying", attempt=attempts, error=error, delay_s=delay)
                self._release(state, log)
                if delay and state.cancelled.wait(delay):
                    break
            if state.cancelled.is_set() and status != SUCCEEDED:
                status = CANCELLED
            elif status == FAILED and s.allow_failure:
                status = ALLOWED_FAILURE
            if s.post:
                outcome = Outcome(status, s.name, error, attempts, round(self.clock() - started, 3))
                post_errors = self._stage_posts(plan, s, spec, ctx, state, outcome, log)
                if post_errors and status == SUCCEEDED:
                    status, error = FAILED, post_errors[0]
        except _Stopped:
            status = CANCELLED
        finally:
            self._release(state, log)
            if lock is not None:
                lock.release()
        if error:
            error = self.secrets.masker.mask(error)
        output_json = None
        if status == SUCCEEDED and self.record_outputs:
            try:
                output_json = dumps(value)
            except NotSerializable as e:
                log.warning("output not stored", reason=f"Stage '{name}' returned {e}")
            if output_json is not None and self.secrets.masker.mask(output_json) != output_json:
                output_json = None  # a secret never reaches a stored record
                log.warning("output not stored", reason=f"Stage '{name}' returned a value that contains a secret")
        finished = self.clock()
        duration = round(finished - started, 3)
        fields: dict[str, Any] = {"status": status, "duration_s": duration}
        if attempts > 1:
            fields["attempts"] = attempts
        if error:
            fields["error"] = error
        log.log(40 if status == FAILED else 30 if status == ALLOWED_FAILURE else 20, "stage finished", **fields)
        return StageResult(
            name,
            status,
            duration,
            started,
            finished,
            error,
            None,
            value if status == SUCCEEDED else None,
            attempts,
            timed_out,
            tuple(post_errors),
            exit_code,
            cache_key if status == SUCCEEDED else None,
            output_json,
        )

    # -- post actions ---------------------------------------------------------------------
    def _call_posts(
        self, actions: Mapping[str, Sequence[Callable[..., Any]]], ctx: Any, outcome: Outcome, log: Any
    ) -> list[str]:
        failed = outcome.status not in (SUCCEEDED, SKIPPED)
        errors = []
        for when in POST_WHEN:
            if (when == "success" and failed) or (when == "failure" and not failed):
                continue
            for fn in actions.get(when, ()):
                action = getattr(fn, "__name__", repr(fn))
                log.info("post action started", when=when, action=action)
                try:
                    fn(ctx, outcome)
                except Exception as e:
                    text = self.secrets.masker.mask(
                        f"post action '{action}' ({when}) failed: {_error_text(outcome.stage or 'pipeline', e)}"
                    )
                    log.error("post action failed", when=when, action=action, error=text)
                    errors.append(text)
        return errors

    def _stage_posts(
        self,
        plan: Plan,
        s: Stage,
        spec: StageSpec | None,
        ctx: Context | None,
        state: _Running,
        outcome: Outcome,
        log: Any,
    ) -> list[str]:
        if ctx is None or state.attempt_stop.is_set():
            # the stage's container is gone (timeout, stop) or never came: post actions get a fresh one
            self._release(state, log)
            fresh = spec or StageSpec(run_id=self.run_id, stage=s.name, image=None, workspace=self._workspace(plan))
            try:
                handle = self.backend.prepare(fresh)
            except Exception as e:
                log.warning("post actions run on the host", error=self.secrets.masker.mask(str(e)))
                fresh = attrs.evolve(fresh, image=None, services=())
                handle = self.backend.prepare(fresh)
            with state.lock:
                state.handle = handle
            ctx = self._context(s, fresh, handle, log, threading.Event())
        return self._call_posts(s.post, ctx, outcome, log)

    def _pipeline_posts(self, plan: Plan, status: str, results: Mapping[str, StageResult]) -> list[str]:
        hooks = plan.pipeline.posts
        if not hooks:
            return []
        log = self.log.bind(stage="pipeline")
        spec = StageSpec(run_id=self.run_id, stage="pipeline", image=None, workspace=self._workspace(plan))
        handle = self.backend.prepare(spec)
        try:
            ctx = Context(
                stage="pipeline",
                run_id=self.run_id,
                workspace=spec.workspace,
                env=dict(os.environ),
                log=log,
                backend=self.backend,
                handle=handle,
                params=self.params,
                secrets=self.secrets,
            )
            outcome = Outcome(
                SUCCEEDED if status == SUCCEEDED else FAILED if status == FAILED else status,
                stages={n: r.status for n, r in results.items()},
                error=next((r.error for r in results.values() if r.status == FAILED and r.error), None),
            )
            actions: dict[str, list[Callable[..., Any]]] = {}
            for hook in hooks:
                actions.setdefault(hook.when, []).append(hook.fn)
            return self._call_posts(actions, ctx, outcome, log)
        finally:
            self.backend.release(handle)

    # -- conditions -----------------------------------------------------------------------
    def decide(self, plan: Plan) -> dict[str, str]:
        """Which stages are skipped before the run starts, and why (conditions, skipped inputs)."""
        info = self.run_info or RunInfo(workspace=self._workspace(plan), params=self.params)
        skip: dict[str, str] = {}
        for name in plan.order:
            s = plan.stage(name)
            if s.when is not None:
                try:
                    if not s.when.evaluate(info):
                        skip[name] = f"condition not met: {s.when}"
                        continue
                except PipekitError:
                    raise
                except Exception as e:
                    raise StageFailed(
                        f"Stage '{name}': its condition raised {type(e).__name__}: {e}", stage=name
                    ) from e
            for dep in s.value_inputs:
                skipped = [n for n in plan.groups.get(dep, (dep,)) if n in skip]
                if skipped:
                    skip[name] = f"needs the value of skipped stage '{dep}'"
                    break
        return skip

    # -- the run --------------------------------------------------------------------------
    def run(self, plan: Plan) -> RunResult:
        """Run every stage of the plan; returns when all have ended, were skipped or cancelled.

        On an interrupt (KeyboardInterrupt, :class:`Interrupted`) every running stage is stopped,
        post actions run, and the run's containers are removed before the exception propagates.
        """
        start = self.clock()
        if self.params is None:
            self.params = resolve_params(plan.pipeline.params.values(), {})
        self.secrets.preload(plan.pipeline.secret_names)
        graph = plan.graph
        position = {n: i for i, n in enumerate(plan.order)}
        waiting = {n: set(graph.predecessors(n)) for n in plan.order}
        ready: list[tuple[int, str]] = []
        results: dict[str, StageResult] = {}
        outputs: dict[str, Any] = {}
        started_order: list[str] = []
        in_flight: dict[Future[StageResult], tuple[str, _Running]] = {}
        stop_reason: str | None = None
        warnings: list[str] = []
        run_deadline = start + self.run_timeout if self.run_timeout else None
        # conditions first: one that cannot be evaluated (pk.changed without git) stops the run
        # before anything starts or is recorded
        condition_errors: dict[str, str] = {}
        try:
            skip = self.decide(plan)
        except StageFailed as e:
            skip, condition_errors = {}, {e.stage: e.message}

        self.log.info(
            "run started",
            run_id=self.run_id,
            pipeline=plan.pipeline.name,
            stages=list(plan.order),
            jobs=self.jobs,
            backend=self.backend.name,
        )
        for o in self.observers:
            o.run_started(self.run_id, plan)
        reported: set[str] = set()

        def report(name: str) -> None:
            if name not in reported and name in results:
                reported.add(name)
                for o in self.observers:
                    o.stage_finished(self.run_id, results[name], position[name])

        def complete(name: str, result: StageResult) -> None:
            results[name] = result
            report(name)
            for child in graph.successors(name):
                waiting[child].discard(name)
                if not waiting[child] and child not in results:
                    heapq.heappush(ready, (position[child], child))

        try:
            for name in plan.order:
                if not waiting[name] and name not in skip:
                    heapq.heappush(ready, (position[name], name))
            for name, message in condition_errors.items():
                results[name] = StageResult(name, FAILED, error=message)
                self.log.error("stage finished", stage=name, status=FAILED, error=message)
                stop_reason = f"'{name}' failed"
                for child in plan.downstream(name):
                    results.setdefault(child, StageResult(child, SKIPPED, reason=f"upstream '{name}' failed"))
            for name in plan.order:
                if name in skip and name not in results:
                    self.log.info("stage finished", stage=name, status=SKIPPED, reason=skip[name])
                    complete(name, StageResult(name, SKIPPED, reason=skip[name]))
                elif name in self.restore and name not in results:
                    from_run, stored = self.restore[name]
                    reason = f"restored from run {from_run}"
                    self.log.info("stage finished", stage=name, status=RESTORED, reason=reason)
                    outputs[name] = loads(stored)
                    complete(
                        name, StageResult(name, RESTORED, 0.0, reason=reason, output=outputs[name], output_json=stored)
                    )
            ready[:] = [(p, n) for p, n in ready if n not in results]
            heapq.heapify(ready)

            # not a `with` block: leaving one waits for every worker, and a stage stuck in its own
            # Python code must not hold the run (or an interrupt) forever
            pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="pipekit-stage")
            try:
                while ready or in_flight:
                    while ready and stop_reason is None and len(in_flight) < self.jobs:
                        _, name = heapq.heappop(ready)
                        if name in results:
                            continue
                        state = _Running()
                        started_order.append(name)
                        for o in self.observers:
                            o.stage_started(self.run_id, name, position[name])
                        fut = pool.submit(self._run_stage, plan, name, dict(outputs), state)
                        in_flight[fut] = (name, state)
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, timeout=self._tick(in_flight, run_deadline), return_when=FIRST_COMPLETED)
                    now = self.clock()
                    if run_deadline is not None and now >= run_deadline and stop_reason is None:
                        stop_reason = f"run timed out after {format_duration(self.run_timeout or 0)}"
                        self.log.error("run timed out", after=format_duration(self.run_timeout or 0))
                        self._cancel(in_flight.values())
                    self._enforce_timeouts(in_flight.values(), now)
                    finished_now = [(fut, fut.result()) for fut in done]
                    finished_now += self._abandon_stuck(in_flight, now)
                    for fut, result in finished_now:
                        name, _state = in_flight.pop(fut)
                        if result.status in DONE_OK:
                            outputs[name] = result.output
                            complete(name, result)
                            continue
                        if result.status == ALLOWED_FAILURE:
                            warnings.append(f"stage '{name}' failed and is allowed to fail")
                            complete(name, result)
                            continue
                        results[name] = result
                        report(name)
                        if result.status != FAILED:
                            continue
                        for child in plan.downstream(name):
                            if child not in results:
                                reason = f"upstream '{name}' failed"
                                results[child] = StageResult(child, SKIPPED, reason=reason)
                                self.log.info("stage finished", stage=child, status=SKIPPED, reason=reason)
                        if stop_reason is None:
                            stop_reason = f"'{name}' failed"
                            if self.fail_fast:
                                self._cancel(in_flight.values())
                pool.shutdown(wait=False)
            except BaseException:
                self._cancel(in_flight.values())
                pool.shutdown(wait=False, cancel_futures=True)
                finished, _ = wait(in_flight, timeout=STOP_GRACE_S)  # post actions run meanwhile
                for fut, (name, _state) in in_flight.items():
                    results[name] = (
                        fut.result()
                        if fut in finished and not fut.cancelled()
                        else StageResult(name, CANCELLED, reason="run interrupted")
                    )
                raise
        except BaseException:
            self.backend.cleanup(self.run_id)
            for name in plan.order:
                if name not in results:
                    results[name] = StageResult(name, SKIPPED, reason="not started: run interrupted")
            try:
                self._pipeline_posts(plan, INTERRUPTED, results)
            finally:
                self.backend.cleanup(self.run_id)
                for name in plan.order:
                    report(name)
                self._finish(plan, results, start, INTERRUPTED, tuple(started_order), warnings)
            raise
        self.backend.cleanup(self.run_id)
        for name in plan.order:
            if name not in results:
                reason = f"not started: {stop_reason}" if stop_reason else "not started"
                results[name] = StageResult(name, SKIPPED, reason=reason)
                self.log.info("stage finished", stage=name, status=SKIPPED, reason=reason)
        failed = any(r.status in (FAILED, CANCELLED) for r in results.values())
        status = FAILED if failed or (stop_reason and "timed out" in stop_reason) else SUCCEEDED
        if self._pipeline_posts(plan, status, results):
            status = FAILED
        self.backend.cleanup(self.run_id)
        for name in plan.order:
            report(name)
        return self._finish(plan, results, start, status, tuple(started_order), warnings)

    def _tick(self, in_flight: Mapping[Any, tuple[str, _Running]], run_deadline: float | None) -> float:
        now = self.clock()
        deadlines = [st.deadline for _, st in in_flight.values() if st.deadline is not None]
        if run_deadline is not None:
            deadlines.append(run_deadline)
        nearest = min(deadlines, default=now + 0.5) - now
        return max(0.01, min(0.5, nearest))

    def _abandon_stuck(
        self, in_flight: Mapping[Future[StageResult], tuple[str, _Running]], now: float
    ) -> list[tuple[Future[StageResult], StageResult]]:
        """Stages that timed out but whose Python code did not stop: failed, and left behind."""
        stuck = []
        for fut, (name, state) in in_flight.items():
            if state.expired_at is not None and now - state.expired_at > ABANDON_GRACE_S and not fut.done():
                error = (
                    f"Stage '{name}' timed out after {format_duration(state.timeout or 0)}; its Python code"
                    " did not stop and was left running"
                )
                self.log.error("stage finished", stage=name, status=FAILED, error=error)
                stuck.append((fut, StageResult(name, FAILED, error=error, timed_out=True, attempts=1)))
        return stuck

    def _enforce_timeouts(self, in_flight: Any, now: float) -> None:
        for name, state in list(in_flight):
            with state.lock:
                expired = state.deadline is not None and now >= state.deadline and not state.attempt_stop.is_set()
                if expired:
                    state.timed_out = True
                    state.expired_at = now
                    state.attempt_stop.set()
                    handle, state.handle = state.handle, None
            if expired:
                self.log.warning("stage timed out", stage=name)
                if handle is not None:
                    try:
                        self.backend.release(handle)
                    except Exception:
                        pass

    def _cancel(self, in_flight: Any) -> None:
        for _name, state in list(in_flight):
            state.cancelled.set()
            with state.lock:
                state.attempt_stop.set()
                handle, state.handle = state.handle, None
            if handle is not None:
                try:
                    self.backend.release(handle)
                except Exception:
                    pass

    def _finish(
        self,
        plan: Plan,
        results: dict[str, StageResult],
        start: float,
        status: str,
        started: tuple[str, ...] = (),
        warnings: Sequence[str] = (),
    ) -> RunResult:
        duration = round(self.clock() - start, 3)
        ordered = {n: results[n] for n in plan.order if n in results}
        for w in warnings:
            self.log.warning("run warning", warning=w)
        summary = []
        for r in ordered.values():
            row: dict[str, Any] = {"stage": r.name, "status": r.status, "duration_s": r.duration_s}
            if r.reason:
                row["reason"] = r.reason
            if r.attempts > 1:
                row["attempts"] = r.attempts
            summary.append(row)
        self.log.log(
            20 if status == SUCCEEDED else 40,
            "run finished",
            run_id=self.run_id,
            status=status,
            duration_s=duration,
            stages=summary,
            **({"warnings": list(warnings)} if warnings else {}),
        )
        result = RunResult(self.run_id, plan.pipeline.name, status, ordered, started, duration, tuple(warnings))
        for o in self.observers:
            o.run_finished(self.run_id, result)
        return result


class _Stopped(Exception):
    """The stage was stopped before it started (while waiting for its resource)."""
