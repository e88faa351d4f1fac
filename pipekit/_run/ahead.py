"""Containers prepared ahead of their stage: created and started while the stages they depend on
still run, so that a stage's container start is off the critical path.

A stage is prepared ahead when it will run as far as can be known (no skip, no restore, no stage
cache that might hit), its image is a named one (not built by the run), and every stage it depends
on has started or succeeded. Its preparation begins once the places of the stages it depends on
are ready, so that it does not compete with them for the engine. At most ``limit`` places are
prepared and waiting at once. A place
whose stage ends up not running (an upstream failure, fail-fast, an interrupt) is removed like any
other, in the background.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from pipekit._core.results import StageResult
from pipekit._plan.resolve import ResolvedStage
from pipekit._run.run import Run
from pipekit._run.spec import stage_spec
from pipekit.backend import StageHandle

__all__ = ["Ahead", "Preparer"]


class Placing(Protocol):
    """A stage in flight, as far as preparing a downstream stage goes (a ``StageRun``)."""

    @property
    def placed(self) -> threading.Event: ...


class Ahead:
    """A stage's place being prepared (its container created and started) before the stage starts."""

    def __init__(self, future: Future[StageHandle]) -> None:
        self._future = future

    def take(self) -> StageHandle | None:
        """The prepared handle; None when preparing failed (the stage then prepares as usual and
        meets the error itself)."""
        try:
            return self._future.result()
        except Exception:
            return None


class Preparer:
    """Prepares stages' places ahead of them, for the scheduler (whose thread alone calls it)."""

    def __init__(self, run: Run, limit: int) -> None:
        self.run = run
        self.limit = limit
        self.enabled = run.backend.capabilities.prepares_ahead
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[str, Ahead] = {}

    def _eligible(self, r: ResolvedStage) -> bool:
        s = r.stage
        return (
            r.skip is None
            and r.restore is None
            and not r.on_host
            and r.image is not None
            and s.cache is None
            and not s.image_from
            and not s.service_images
            and not s.dockerfile
            and s.approval is None  # nothing is held while a gate waits
        )

    def consider(
        self,
        started: Sequence[str],
        results: Mapping[str, StageResult],
        stopped: bool,
        running: Mapping[str, Placing] | None = None,
    ) -> None:
        """Prepare what can be prepared now (``running``: the stages in flight, by name)."""
        if not self.enabled or stopped:
            return
        resolved = self.run.resolved
        begun = set(started)
        for name in resolved.order:
            if len(self._ahead) >= self.limit:
                return
            if name in begun or name in results or name in self._ahead or not self._eligible(resolved[name]):
                continue
            upstream = resolved.plan.upstream(name)
            if all(p in begun or (p in results and results[p].status.ok) for p in upstream):
                flying = running or {}
                self._start(resolved[name], [flying[p].placed for p in upstream if p in flying])

    def _start(self, r: ResolvedStage, after: list[threading.Event]) -> None:
        try:
            spec = stage_spec(self.run, r, r.image)  # a stage prepared ahead runs in a named image
        except Exception:
            return  # (a missing secret, ...): the stage meets it when it starts
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.limit, thread_name_prefix="pipekit-prepare")
        backend = self.run.backend

        def prepare() -> StageHandle:
            for event in after:
                event.wait()
            return backend.prepare(spec)

        self._ahead[r.name] = Ahead(self._pool.submit(prepare))

    def take(self, name: str) -> Ahead | None:
        """The place prepared for a stage that starts now."""
        return self._ahead.pop(name, None)

    def drop(self, names: set[str] | None = None) -> None:
        """Remove (in the background) the places of stages that will not start; None: all."""
        for name in list(self._ahead) if names is None else [n for n in names if n in self._ahead]:
            ahead = self._ahead.pop(name)
            self.run.releases.submit(lambda ahead=ahead: self._release(ahead))  # type: ignore[misc]

    def _release(self, ahead: Ahead) -> None:
        handle = ahead.take()
        if handle is not None:
            try:
                self.run.backend.release(handle)
            except Exception as e:
                self.run.log.warning("cleanup failed", error=str(e))

    def close(self) -> None:
        self.drop()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
