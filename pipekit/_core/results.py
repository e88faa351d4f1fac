"""How stages and runs end: statuses and results.

A low-level module: it imports nothing from pipekit, so every other module (the
scheduler, the history, the test runner, the CLI) can share these values without import loops.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = ["EXIT_AWAITING", "RunResult", "RunStatus", "StageResult", "StageStatus", "masked"]


#: the exit code of a run that ended with a gate awaiting approval (and nothing failed): ``pipekit
#: approve RUN STAGE``, then ``pipekit run --resume RUN``
EXIT_AWAITING = 4


class _TextEnum(str, enum.Enum):
    """A ``str`` enum that is its value wherever it becomes text (JSON, f-strings, SQLite)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class StageStatus(_TextEnum):
    """How a stage ended (or where it is): compares equal to its plain string."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ALLOWED_FAILURE = "allowed_failure"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    CACHED = "cached"
    RESTORED = "restored"
    INTERRUPTED = "interrupted"
    #: a gated stage that nobody approved yet (``pipekit approve``); the run ended without it
    AWAITING = "awaiting_approval"

    @property
    def ok(self) -> bool:
        """Dependents run after it, and the run can succeed."""
        return self in (StageStatus.SUCCEEDED, StageStatus.CACHED, StageStatus.RESTORED)


class RunStatus(_TextEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    #: nothing failed, and a gate awaits approval: exit code ``EXIT_AWAITING``
    AWAITING = "awaiting_approval"


@attrs.frozen
class StageResult:
    """How one stage of a run ended.

    ``status`` is a :class:`StageStatus`; ``reason`` says why a stage was skipped, cached or
    restored; ``attempts`` counts runs of the stage (more than 1 after retries).
    """

    name: str
    status: StageStatus = attrs.field(converter=StageStatus)
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
    #: the hashes the cache key was made of (what `pipekit plan` compares when the cache misses)
    cache_inputs: Mapping[str, Any] | None = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen
class RunResult:
    """How a run ended: its status, each stage's result, and the order stages started in."""

    run_id: str
    pipeline: str
    status: RunStatus = attrs.field(converter=RunStatus)
    stages: Mapping[str, StageResult]
    started: tuple[str, ...]
    duration_s: float
    warnings: tuple[str, ...] = ()
    #: the engine went away during the run: its failures are the engine's, and the exit code is 3
    engine_lost: bool = False

    @property
    def exit_code(self) -> int:
        if self.engine_lost:
            return 3
        if self.status == RunStatus.AWAITING:
            return EXIT_AWAITING
        return 0 if self.status == RunStatus.SUCCEEDED else 1

    def __getitem__(self, stage: str) -> StageResult:
        return self.stages[stage]


def masked(result: StageResult, mask: Callable[[str], str]) -> StageResult:
    """The result with every text a user reads (error, reason, post action errors) masked."""
    return attrs.evolve(
        result,
        error=mask(result.error) if result.error else result.error,
        reason=mask(result.reason) if result.reason else result.reason,
        post_errors=tuple(mask(e) for e in result.post_errors),
    )
