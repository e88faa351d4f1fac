"""The scheduler: starts each stage the moment its last dependency has succeeded.

It keeps, per stage, the dependencies it still waits for; a stage with none is ready, and up to
``jobs`` ready stages run at once, each a :class:`pipekit._run.stagerun.StageRun` in a worker thread.
There is no layer barrier: a slow stage holds back only what depends on it. The scheduler's
thread enforces the stages' and the run's deadlines, stops the running stages on fail-fast and on
interrupts (``KeyboardInterrupt``, :class:`pipekit.Interrupted`), and removes what the run left.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import attrs

from pipekit._core.results import RunResult, RunStatus, StageResult, StageStatus, masked
from pipekit._dsl.control import format_duration
from pipekit._run.ahead import Preparer
from pipekit._run.gates import TIMED_OUT, GateAsk, Verdict
from pipekit._run.outputs import take_restored, taken_result
from pipekit._run.posts import pipeline_posts
from pipekit._run.run import Run, RunObserver
from pipekit._run.stagerun import StageRun

__all__ = ["Scheduler", "StopReason"]

STOP_GRACE_S = 10.0


class StopReason(enum.Enum):
    """Why the run starts no more stages."""

    STAGE_FAILED = "a stage failed"
    TIMED_OUT = "the run timed out"


@attrs.frozen
class _Stop:
    reason: StopReason
    message: str  # what the stages that did not start say ("not started: 'build' failed")


class _Board:
    """Where the run stands: results, outputs, what waits for what, what is ready."""

    def __init__(self, run: Run, observers: Sequence[RunObserver]) -> None:
        self.run = run
        self.observers = observers
        plan = run.resolved.plan
        self.position = {n: i for i, n in enumerate(plan.order)}
        self.waiting = {n: set(plan.upstream(n)) for n in plan.order}
        self.ready: list[tuple[int, str]] = []
        self.results: dict[str, StageResult] = {}
        self.outputs: dict[str, Any] = {}
        self.started: list[str] = []
        self.reported: set[str] = set()
        self.stop: _Stop | None = None  # why no more stages start
        self.approvals: dict[str, Any] = {}  # gated stages approved: their decisions (ctx.approval)
        self.prompts: dict[Future[Any], tuple[str, Verdict]] = {}  # gates asked at the terminal
        self.warnings: list[str] = []
        self.engine_lost = False

    def record(self, name: str, result: StageResult) -> None:
        """Keep a result, masked: the one place where stage results leave the stage."""
        self.results[name] = masked(result, self.run.secrets.masker.mask)
        self.report(name)

    def report(self, name: str) -> None:
        if name not in self.reported and name in self.results:
            self.reported.add(name)
            for o in self.observers:
                o.stage_finished(self.run.run_id, self.results[name], self.position[name])

    def complete(self, name: str, result: StageResult) -> None:
        """A stage ended in a way its dependents can go on from."""
        self.record(name, result)
        for child in self.run.resolved.plan.dependents(name):
            self.waiting[child].discard(name)
            if not self.waiting[child] and child not in self.results:
                heapq.heappush(self.ready, (self.position[child], child))

    def skip_downstream(self, name: str, reason: str) -> None:
        for child in sorted(self.run.resolved.plan.downstream(name), key=self.position.__getitem__):  # plan order
            if child not in self.results:
                self.results[child] = StageResult(child, StageStatus.SKIPPED, reason=reason)
                self.run.log.info("stage finished", stage=child, status=StageStatus.SKIPPED, reason=reason)

    def not_started(self, reason: str, log: bool = True) -> None:
        for name in self.run.resolved.order:
            if name not in self.results:
                self.results[name] = StageResult(name, StageStatus.SKIPPED, reason=reason)
                if log:
                    self.run.log.info("stage finished", stage=name, status=StageStatus.SKIPPED, reason=reason)


class Scheduler:
    """Runs a resolved plan: ``jobs`` stages at a time, stopping on ``fail_fast`` and ``timeout``."""

    def __init__(
        self,
        run: Run,
        *,
        jobs: int = 4,
        fail_fast: bool = False,
        timeout: float | None = None,
        observers: Sequence[RunObserver] = (),
    ) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.run = run
        self.jobs = jobs
        self.fail_fast = fail_fast
        self.timeout = timeout
        self.observers = list(observers)
        self._prompt_pool: ThreadPoolExecutor | None = None

    def execute(self) -> RunResult:
        """Run every stage; returns when all have ended, were skipped or cancelled.

        On an interrupt every running stage is stopped, post actions run, and the run's
        containers are removed before the exception propagates.
        """
        run = self.run
        start = run.clock()
        board = _Board(run, self.observers)
        run.log.info(
            "run started",
            run_id=run.run_id,
            pipeline=run.resolved.plan.pipeline.name,
            stages=list(run.resolved.order),
            jobs=self.jobs,
            backend=run.backend.name,
        )
        for o in self.observers:
            o.run_started(run.run_id, run.resolved.plan)
        try:
            self._settle_before_start(board)
            self._loop(board, start)
        except BaseException:
            self._end_interrupted(board, start)
            raise
        return self._end(board, start)

    def _settle_before_start(self, board: _Board) -> None:
        """Conditions that could not be evaluated, skips and restored stages: all known up front."""
        resolved = self.run.resolved
        for name in resolved.order:
            if not board.waiting[name] and resolved[name].skip is None:
                heapq.heappush(board.ready, (board.position[name], name))
        for name, message in resolved.condition_errors.items():
            board.record(name, StageResult(name, StageStatus.FAILED, error=message))
            self.run.log.error("stage finished", stage=name, status=StageStatus.FAILED, error=message)
            board.stop = _Stop(StopReason.STAGE_FAILED, f"'{name}' failed")
            board.skip_downstream(name, f"upstream '{name}' failed")
        for name in resolved.order:
            r = resolved[name]
            if name in board.results:
                continue
            if r.skip is not None:
                self.run.log.info("stage finished", stage=name, status=StageStatus.SKIPPED, reason=r.skip)
                board.complete(name, StageResult(name, StageStatus.SKIPPED, reason=r.skip))
            elif r.restore is not None:
                taken = take_restored(self.run, r)
                if taken.status is None:  # an image it made is gone: it runs again
                    self.run.log.info("stage not restored", stage=name, reason=taken.why)
                    continue
                result = taken_result(name, taken)
                self.run.log.info("stage finished", stage=name, status=StageStatus.RESTORED, reason=result.reason)
                board.outputs[name] = result.output
                board.complete(name, result)
        board.ready[:] = [(p, n) for p, n in board.ready if n not in board.results]
        heapq.heapify(board.ready)

    def _loop(self, board: _Board, start: float) -> None:
        # not a `with` block: leaving one waits for every worker, and a stage stuck in its own
        # Python code must not hold the run (or an interrupt) forever
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="pipekit-stage")
        self.preparer = Preparer(self.run, self.jobs)
        in_flight: dict[Future[StageResult], StageRun] = {}
        deadline = start + self.timeout if self.timeout else None
        try:
            while board.ready or in_flight or board.prompts:
                self._start_ready(board, pool, in_flight)
                running = {sr.name: sr for sr in in_flight.values()}
                self.preparer.consider(board.started, board.results, board.stop is not None, running)
                if not in_flight and not board.prompts:
                    break
                waited = {*in_flight, *board.prompts}
                done, _ = wait(waited, timeout=self._wait_timeout(in_flight, deadline), return_when=FIRST_COMPLETED)
                self._answered(board, in_flight, [f for f in done if f in board.prompts])
                if board.stop is not None and board.prompts:
                    self._stop_prompts(board)
                done = {f for f in done if f in in_flight}
                now = self.run.clock()
                if deadline is not None and now >= deadline and board.stop is None:
                    board.stop = _Stop(
                        StopReason.TIMED_OUT, f"run timed out after {format_duration(self.timeout or 0)}"
                    )
                    self.run.log.error("run timed out", after=format_duration(self.timeout or 0))
                    _cancel(in_flight.values())
                for sr in list(in_flight.values()):
                    sr.expire_if_due(now)
                finished = [(fut, fut.result()) for fut in done]
                for fut, sr in in_flight.items():
                    stuck = None if fut.done() else sr.stuck_result(now)
                    if stuck is not None:
                        finished.append((fut, stuck))
                for fut, result in finished:
                    sr = in_flight.pop(fut)
                    board.engine_lost = board.engine_lost or sr.engine_lost
                    self._settle(board, in_flight, sr.name, result)
            pool.shutdown(wait=False)
            self.preparer.close()
        except BaseException:
            self._stop_prompts(board)
            self.preparer.close()
            _cancel(in_flight.values())
            pool.shutdown(wait=False, cancel_futures=True)
            ended, _ = wait(in_flight, timeout=STOP_GRACE_S)  # post actions run meanwhile
            for fut, sr in in_flight.items():
                ok = fut in ended and not fut.cancelled()
                board.record(
                    sr.name,
                    fut.result() if ok else StageResult(sr.name, StageStatus.CANCELLED, reason="run interrupted"),
                )
            raise

    def _start_ready(
        self, board: _Board, pool: ThreadPoolExecutor, in_flight: dict[Future[StageResult], StageRun]
    ) -> None:
        while board.ready and board.stop is None and len(in_flight) < self.jobs:
            _, name = heapq.heappop(board.ready)
            if name in board.results:
                continue
            approval = self.run.resolved[name].stage.approval
            if approval is not None and name not in board.approvals and not self._gate(board, in_flight, name):
                continue
            board.started.append(name)
            for o in self.observers:
                o.stage_started(self.run.run_id, name, board.position[name])
            sr = StageRun(
                self.run,
                self.run.resolved[name],
                dict(board.outputs),
                self.preparer.take(name),
                board.approvals.get(name),
            )
            in_flight[pool.submit(sr.execute)] = sr

    # -- approval gates ----------------------------------------------------------------------
    def _gate(self, board: _Board, in_flight: Mapping[Future[StageResult], StageRun], name: str) -> bool:
        """A gated stage is ready: True when it may start now (approved); else it failed (rejected,
        timed out), awaits approval, or is being asked about at the terminal."""
        gates = self.run.gates
        approval = self.run.resolved[name].stage.approval
        assert approval is not None
        verdict = gates.verdict(name, approval)
        if verdict.decision is None and verdict.error is None and gates.prompter is not None:
            ran = [r for r in board.results.values() if r.status.ok or r.status == StageStatus.FAILED]
            deadline = verdict.since + approval.timeout if approval.timeout else None
            ask = GateAsk(self.run.run_id, name, approval, tuple(ran), deadline)
            if self._prompt_pool is None:
                self._prompt_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipekit-prompt")
            board.prompts[self._prompt_pool.submit(gates.ask, ask)] = (name, verdict)
            self.run.log.info("awaiting approval", stage=name, message=approval.message)
            return False
        return self._gate_decided(board, in_flight, name, verdict)

    def _gate_decided(
        self, board: _Board, in_flight: Mapping[Future[StageResult], StageRun], name: str, verdict: Verdict
    ) -> bool:
        gates = self.run.gates
        approval = self.run.resolved[name].stage.approval
        assert approval is not None
        gates.record(name, approval, verdict)
        d = verdict.decision
        if d is not None and d.approved:
            board.approvals[name] = d
            self.run.log.info("stage approved", stage=name, by=d.by, via=d.via)
            return True
        error = verdict.error or (f"rejected by {d.by}: {d.reason}" if d is not None else None)
        if error is not None:
            self.run.log.error("stage finished", stage=name, status=StageStatus.FAILED, error=error)
            self._settle(board, in_flight, name, StageResult(name, StageStatus.FAILED, error=error))
            return False
        reason = f"awaiting approval: {approval.message}"
        self.run.log.warning("stage finished", stage=name, status=StageStatus.AWAITING, reason=reason)
        board.record(name, StageResult(name, StageStatus.AWAITING, reason=reason))
        board.skip_downstream(name, f"not started: '{name}' awaits approval")
        return False

    def _answered(
        self, board: _Board, in_flight: Mapping[Future[StageResult], StageRun], done: Sequence[Future[Any]]
    ) -> None:
        """Gates answered at the terminal: approved ones become ready, the others settle."""
        for fut in done:
            name, asked = board.prompts.pop(fut)
            try:
                answer = None if fut.cancelled() else fut.result()
            except Exception as e:  # the terminal went away: the gate stays awaiting
                self.run.log.warning("prompt failed", stage=name, error=str(e))
                answer = None
            if board.stop is not None:
                continue  # nothing new starts: the stage is 'not started'
            if answer == TIMED_OUT or answer is None:
                approval = self.run.resolved[name].stage.approval
                timeout = format_duration(approval.timeout or 0) if approval else ""
                verdict = Verdict(error=f"approval timed out after {timeout}" if answer else None, since=asked.since)
            else:
                verdict = Verdict(answer, since=asked.since, new=True)
            if self._gate_decided(board, in_flight, name, verdict):
                heapq.heappush(board.ready, (board.position[name], name))

    def _stop_prompts(self, board: _Board) -> None:
        self.run.gates.stop.set()
        if self._prompt_pool is not None:
            self._prompt_pool.shutdown(wait=False, cancel_futures=True)

    def _settle(
        self, board: _Board, in_flight: Mapping[Future[StageResult], StageRun], name: str, result: StageResult
    ) -> None:
        if result.status.ok:
            board.outputs[name] = result.output
            board.complete(name, result)
            return
        if result.status == StageStatus.ALLOWED_FAILURE:
            board.warnings.append(f"stage '{name}' failed and is allowed to fail")
            board.complete(name, result)
            return
        board.record(name, result)
        if result.status != StageStatus.FAILED:
            return
        board.skip_downstream(name, f"upstream '{name}' failed")
        self.preparer.drop(set(board.results))
        if board.stop is None:
            board.stop = _Stop(StopReason.STAGE_FAILED, f"'{name}' failed")
            self.preparer.drop()  # nothing new starts now
            self._stop_prompts(board)
            if self.fail_fast:
                _cancel(in_flight.values())

    def _wait_timeout(self, in_flight: Mapping[Any, StageRun], run_deadline: float | None) -> float:
        """How long the scheduler's thread may wait for a stage to end before it checks the deadlines."""
        now = self.run.clock()
        deadlines = [sr.deadline for sr in in_flight.values() if sr.deadline is not None]
        if run_deadline is not None:
            deadlines.append(run_deadline)
        nearest = min(deadlines, default=now + 0.5) - now
        return max(0.01, min(0.5, nearest))

    # -- the end -------------------------------------------------------------------------------
    def _end_interrupted(self, board: _Board, start: float) -> None:
        self.run.cleanup()
        board.not_started("not started: run interrupted", log=False)
        try:
            pipeline_posts(self.run, RunStatus.INTERRUPTED, board.results)
        finally:
            self.run.cleanup()
            self._finish(board, start, RunStatus.INTERRUPTED)

    def _end(self, board: _Board, start: float) -> RunResult:
        self.run.releases.wait()  # every stage's container is gone before the pipeline's posts
        reason = f"not started: {board.stop.message}" if board.stop else "not started"
        board.not_started(reason)
        self._stop_prompts(board)
        failed = any(r.status in (StageStatus.FAILED, StageStatus.CANCELLED) for r in board.results.values())
        timed_out = board.stop is not None and board.stop.reason is StopReason.TIMED_OUT
        awaiting = any(r.status == StageStatus.AWAITING for r in board.results.values())
        status = RunStatus.FAILED if failed or timed_out else RunStatus.AWAITING if awaiting else RunStatus.SUCCEEDED
        if pipeline_posts(self.run, status, board.results):
            status = RunStatus.FAILED
        self.run.cleanup()
        return self._finish(board, start, status)

    def _finish(self, board: _Board, start: float, status: RunStatus) -> RunResult:
        run = self.run
        for name in run.resolved.order:
            if name in board.results and name not in board.reported:
                board.record(name, board.results[name])
        duration = round(run.clock() - start, 3)
        ordered = {n: board.results[n] for n in run.resolved.order if n in board.results}
        for w in board.warnings:
            run.log.warning("run warning", warning=w)
        run.log.log(
            logging.INFO if status == RunStatus.SUCCEEDED else logging.ERROR,
            "run finished",
            run_id=run.run_id,
            status=status,
            duration_s=duration,
            stages=[_summary_row(r) for r in ordered.values()],
            **({"warnings": list(board.warnings)} if board.warnings else {}),
        )
        pipeline = run.resolved.plan.pipeline.name
        result = RunResult(
            run_id=run.run_id,
            pipeline=pipeline,
            status=status,
            stages=ordered,
            started=tuple(board.started),
            duration_s=duration,
            warnings=tuple(board.warnings),
            engine_lost=board.engine_lost,
        )
        for o in self.observers:
            o.run_finished(run.run_id, result)
        return result


def _summary_row(r: StageResult) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": r.name, "status": r.status, "duration_s": r.duration_s}
    if r.reason:
        row["reason"] = r.reason
    if r.attempts > 1:
        row["attempts"] = r.attempts
    return row


def _cancel(stage_runs: Any) -> None:
    for sr in list(stage_runs):
        sr.cancel()
