"""The executor: starts each stage the moment its last dependency has succeeded."""

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
from typing import IO, Any

import attrs

from pipekit._context import Context
from pipekit._graph import Plan
from pipekit._logging import Processor, make_logger
from pipekit._params import Params, resolve_params
from pipekit._secrets import SecretStore
from pipekit.backend import Backend, BuildSpec, Image, StageHandle, StageSpec
from pipekit.exceptions import PipekitError, StageCodeError, StageFailed

__all__ = ["Executor", "RunResult", "StageResult", "new_run_id"]

SUCCEEDED, FAILED, SKIPPED, CANCELLED = "succeeded", "failed", "skipped", "cancelled"
STOP_GRACE_S = 10.0
_PIPEKIT_DIR = os.path.dirname(os.path.abspath(__file__))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.") or "x"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@attrs.frozen
class StageResult:
    """How one stage of a run ended."""

    name: str
    status: str
    duration_s: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    reason: str | None = None
    output: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class RunResult:
    """How a run ended: its status, each stage's result, and the order stages started in."""

    run_id: str
    pipeline: str
    status: str
    stages: Mapping[str, StageResult]
    started: tuple[str, ...]
    duration_s: float

    @property
    def exit_code(self) -> int:
        return 0 if self.status == SUCCEEDED else 1

    def __getitem__(self, stage: str) -> StageResult:
        return self.stages[stage]


def _user_traceback(exc: BaseException) -> str:
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(f.filename).startswith(_PIPEKIT_DIR + os.sep)
    ]
    text = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    text.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(text)


class _Running:
    """A stage in flight: its cancel flag and, once prepared, its handle."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.handle: StageHandle | None = None
        self.lock = threading.Lock()


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
        run_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self.run_id = run_id or new_run_id()
        self.clock = clock

    # -- one stage ------------------------------------------------------------------------
    def _image(self, plan: Plan, name: str, outputs: Mapping[str, Any], workspace: Path, log: Any) -> str | None:
        """The image the stage runs in: named (after --image-map), another stage's, or built."""
        pipeline = plan.pipeline
        s = plan.stage(name)
        if s.image_from:
            made = outputs.get(s.image_from)
            if not isinstance(made, Image):
                raise StageFailed(
                    f"Stage '{name}' runs in the image of stage '{s.image_from}', which returned"
                    f" {type(made).__name__}, not a pk.Image. Return ctx.docker.build(...) from '{s.image_from}'",
                    stage=name,
                )
            return made.id
        if s.dockerfile:
            tag = f"pipekit-dockerfile/{_slug(pipeline.name)}-{_slug(name)}:latest"
            log.info("image build started", dockerfile=s.dockerfile, tag=tag)
            image = self.backend.build(
                BuildSpec(run_id=self.run_id, stage=name, context=workspace, dockerfile=s.dockerfile, tag=tag),
                lambda stream, line: log.info("output", line=line, stream=stream),
            )
            log.info("image built", image=image.id, tags=list(image.tags))
            return image.id
        named = pipeline.image_for(s)
        return self.image_map.get(named, named) if named is not None else None

    def _spec(self, plan: Plan, name: str, outputs: Mapping[str, Any], log: Any) -> StageSpec:
        pipeline = plan.pipeline
        s = plan.stage(name)
        workspace = Path(pipeline.path).parent if pipeline.path else Path.cwd()
        return StageSpec(
            run_id=self.run_id,
            stage=name,
            image=self._image(plan, name, outputs, workspace, log),
            workspace=workspace,
            env=self.secrets.resolve_env(pipeline.env_for(s), stage=name),
        )

    def _run_stage(
        self, plan: Plan, name: str, outputs: Mapping[str, Any], running: _Running
    ) -> StageResult:
        s = plan.stage(name)
        log = self.log.bind(stage=name)
        started = self.clock()
        log.info("stage started", status="running", image=plan.pipeline.describe_image(s))
        status, error, value = SUCCEEDED, None, None
        handle: StageHandle | None = None
        try:
            spec = self._spec(plan, name, outputs, log)
            handle = self.backend.prepare(spec)
            with running.lock:
                running.handle = handle
            if running.cancelled.is_set():
                raise StageFailed(f"Stage '{name}' was stopped", stage=name)
            ctx = Context(
                stage=name,
                run_id=self.run_id,
                workspace=spec.workspace,
                env={**os.environ, **spec.env} if spec.image is None else spec.env,
                log=log,
                backend=self.backend,
                handle=handle,
                cancelled=running.cancelled,
                params=self.params,
                secrets=self.secrets,
            )
            kwargs: dict[str, Any] = {p: outputs[p] for p in s.inputs}
            kwargs.update({p: outputs[p] for p in s.optional_inputs if p in outputs})
            if s.wants_context:
                kwargs[s.wants_context] = ctx
            value = s.fn(**kwargs)
        except StageFailed as e:
            status, error = FAILED, e.message
        except PipekitError as e:
            status, error = FAILED, e.message
        except Exception as e:
            status, error = FAILED, StageCodeError(stage=name, error=e, traceback=_user_traceback(e)).message
        finally:
            if handle is not None:
                try:
                    self.backend.release(handle)
                except Exception as e:  # never hide the stage's own outcome
                    log.warning("cleanup failed", error=str(e))
        if running.cancelled.is_set():
            status, error = CANCELLED, None
        if error:
            error = self.secrets.masker.mask(error)
        finished = self.clock()
        duration = round(finished - started, 3)
        log.log(
            40 if status == FAILED else 20,
            "stage finished",
            status=status,
            duration_s=duration,
            **({"error": error} if error else {}),
        )
        return StageResult(name, status, duration, started, finished, error, None, value)

    # -- the run --------------------------------------------------------------------------
    def run(self, plan: Plan) -> RunResult:
        """Run every stage of the plan; returns when all have ended, were skipped or cancelled.

        On an interrupt (KeyboardInterrupt, :class:`Interrupted`) every running stage is stopped
        and the run's containers are removed before the exception propagates.
        """
        start = self.clock()
        graph = plan.graph
        position = {n: i for i, n in enumerate(plan.order)}
        waiting = {n: set(graph.predecessors(n)) for n in plan.order}
        ready: list[tuple[int, str]] = [(position[n], n) for n in plan.order if not waiting[n]]
        heapq.heapify(ready)
        results: dict[str, StageResult] = {}
        outputs: dict[str, Any] = {}
        started_order: list[str] = []
        in_flight: dict[Future[StageResult], tuple[str, _Running]] = {}
        stop_reason: str | None = None

        if self.params is None:
            self.params = resolve_params(plan.pipeline.params.values(), {})
        self.secrets.preload(plan.pipeline.secret_names)
        self.log.info(
            "run started",
            run_id=self.run_id,
            pipeline=plan.pipeline.name,
            stages=list(plan.order),
            jobs=self.jobs,
            backend=self.backend.name,
        )
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="pipekit-stage")
        try:
            while ready or in_flight:
                while ready and stop_reason is None and len(in_flight) < self.jobs:
                    _, name = heapq.heappop(ready)
                    state = _Running()
                    started_order.append(name)
                    fut = pool.submit(self._run_stage, plan, name, dict(outputs), state)
                    in_flight[fut] = (name, state)
                if not in_flight:
                    break
                done, _ = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    name, _state = in_flight.pop(fut)
                    result = fut.result()
                    results[name] = result
                    if result.status == SUCCEEDED:
                        outputs[name] = result.output
                        for child in graph.successors(name):
                            waiting[child].discard(name)
                            if not waiting[child] and child not in results:
                                heapq.heappush(ready, (position[child], child))
                        continue
                    if result.status != FAILED:
                        continue
                    for child in plan.downstream(name):
                        if child not in results:
                            results[child] = StageResult(child, SKIPPED, reason=f"upstream '{name}' failed")
                            self.log.info(
                                "stage finished", stage=child, status=SKIPPED, reason=f"upstream '{name}' failed"
                            )
                    if stop_reason is None:
                        stop_reason = f"'{name}' failed"
                        if self.fail_fast:
                            self._cancel(in_flight.values())
        except BaseException:
            self._cancel(in_flight.values())
            self.backend.cleanup(self.run_id)
            pool.shutdown(wait=False, cancel_futures=True)
            wait(in_flight, timeout=STOP_GRACE_S)  # a stage stuck in Python code is left to exit
            for _fut, (name, _state) in in_flight.items():
                if name not in results:
                    results[name] = StageResult(name, CANCELLED, reason="run interrupted")
            for name in plan.order:
                if name not in results:
                    results[name] = StageResult(name, SKIPPED, reason="not started: run interrupted")
            self._finish(plan, results, start, "interrupted")
            raise
        pool.shutdown(wait=True)
        self.backend.cleanup(self.run_id)
        for name in plan.order:
            if name not in results:
                reason = f"not started: {stop_reason}" if stop_reason else "not started"
                results[name] = StageResult(name, SKIPPED, reason=reason)
                self.log.info("stage finished", stage=name, status=SKIPPED, reason=reason)
        failed = any(r.status in (FAILED, CANCELLED) for r in results.values())
        return self._finish(plan, results, start, FAILED if failed else SUCCEEDED, tuple(started_order))

    def _cancel(self, in_flight: Any) -> None:
        for _name, state in list(in_flight):
            state.cancelled.set()
            with state.lock:
                handle = state.handle
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
    ) -> RunResult:
        duration = round(self.clock() - start, 3)
        ordered = {n: results[n] for n in plan.order if n in results}
        self.log.log(
            20 if status == SUCCEEDED else 40,
            "run finished",
            run_id=self.run_id,
            status=status,
            duration_s=duration,
            stages=[
                {"stage": r.name, "status": r.status, "duration_s": r.duration_s}
                | ({"reason": r.reason} if r.reason else {})
                for r in ordered.values()
            ],
        )
        return RunResult(self.run_id, plan.pipeline.name, status, ordered, started, duration)
