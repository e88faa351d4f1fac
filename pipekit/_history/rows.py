"""The run history's records as values: what ``pipekit runs``, ``show`` and the tests read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from pipekit._core.results import StageStatus
from pipekit._core.testreport import FailedTest

__all__ = ["ArtifactRow", "CacheRow", "RunRow", "StageRow", "TestRow"]


def _maybe_bool(value: object) -> bool | None:
    return None if value is None else bool(value)


@attrs.frozen
class RunRow:
    id: str
    pipeline: str
    path: str
    branch: str | None
    git_commit: str | None
    argv: str
    user: str
    host: str
    pid: int
    started: float
    ended: float | None
    status: str
    resumed_from: str | None
    #: the working tree had uncommitted changes to tracked files (None: not a git checkout, or unknown)
    dirty: bool | None = attrs.field(default=None, converter=_maybe_bool)

    @property
    def duration_s(self) -> float | None:
        return round(self.ended - self.started, 3) if self.ended else None

    @property
    def commit_text(self) -> str:
        """The commit, marked when the working tree was dirty: ``1a2b3c4d5e6f-dirty`` (as ``git
        describe --dirty`` marks it), ``-`` outside git."""
        if not self.git_commit:
            return "-"
        return f"{self.git_commit[:12]}-dirty" if self.dirty else self.git_commit[:12]


@attrs.frozen
class StageRow:
    run_id: str
    name: str
    position: int
    status: StageStatus = attrs.field(converter=StageStatus)
    attempts: int
    started: float | None
    duration_s: float | None
    exit_code: int | None
    error: str | None
    reason: str | None
    cache_hit: bool
    cache_key: str | None
    output: str | None
    output_stored: bool


@attrs.frozen
class ArtifactRow:
    """A file a stage archived; its content is ``.pipekit/artifacts/SHA256``."""

    run_id: str
    stage: str
    path: str
    sha256: str
    size: int


@attrs.frozen
class TestRow:
    """The test reports a stage read with ``ctx.junit``."""

    __test__ = False  # not a pytest test class

    run_id: str
    stage: str
    tests: int
    failures: int
    errors: int
    skipped: int
    failed: tuple[FailedTest, ...]
    files: tuple[str, ...]

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    @classmethod
    def from_db(cls, row: Mapping[str, Any]) -> TestRow:
        failed = tuple(FailedTest(f["name"], f["message"], f["kind"]) for f in json.loads(row["failed"]))
        return cls(**{**dict(row), "failed": failed, "files": tuple(json.loads(row["files"]))})


@attrs.frozen
class CacheRow:
    """A cached stage result: the run that stored it."""

    key: str
    run_id: str
    stage: str
    created: float
