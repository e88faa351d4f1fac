"""What starts a pipeline under ``pipekit serve``: pushes to some branches, and cron schedules.

``pk.Pipeline(triggers=[pk.on_push(branches=["main"]), pk.cron("0 3 * * *")])``. The server reads
them from the pipeline (``pipekit triggers`` prints them as JSON); ``pipekit run`` ignores them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from pipekit._dsl.conditions import check_glob, glob_match
from pipekit.exceptions import PipelineError

__all__ = ["Trigger", "cron", "on_push"]


@attrs.frozen
class Trigger:
    """``kind`` is ``push`` (``branches``: globs, empty for every branch the server watches) or
    ``cron`` (``schedule``: five fields, or six with seconds last; ``branch``: the branch to run,
    by default the first one the server watches)."""

    kind: str
    branches: tuple[str, ...] = ()
    schedule: str | None = None
    branch: str | None = None

    def wants_push(self, branch: str) -> bool:
        return self.kind == "push" and (not self.branches or any(glob_match(b, branch) for b in self.branches))

    def to_json(self) -> dict[str, Any]:
        found = {"kind": self.kind, "branches": list(self.branches), "schedule": self.schedule, "branch": self.branch}
        return {k: v for k, v in found.items() if v not in (None, [])}


def on_push(branches: Sequence[str] | None = None) -> Trigger:
    """Run on a push to one of ``branches`` (globs like ``release/*``; None: every watched branch)."""
    if isinstance(branches, str):
        raise PipelineError(f"pk.on_push(branches=...) takes a list of branches, got {branches!r}")
    return Trigger("push", tuple(check_glob(b, "pk.on_push(branches=...)") for b in branches or ()))


def cron(schedule: str, *, branch: str | None = None) -> Trigger:
    """Run on a schedule: ``"0 3 * * *"`` (minute hour day month weekday, the server's time zone), or
    six fields with seconds last (``"* * * * * */30"``)."""
    if not isinstance(schedule, str) or len(schedule.split()) not in (5, 6):
        raise PipelineError(
            f"pk.cron() takes a schedule of five fields (minute hour day month weekday), like '0 3 * * *';"
            f" got {schedule!r}"
        )
    return Trigger("cron", schedule=" ".join(schedule.split()), branch=branch)


def check_triggers(triggers: Iterable[Any]) -> tuple[Trigger, ...]:
    found = tuple(triggers)
    for t in found:
        if not isinstance(t, Trigger):
            raise PipelineError(f"pk.Pipeline(triggers=...) takes pk.on_push(...) and pk.cron(...), got {t!r}")
    return found
