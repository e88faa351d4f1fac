"""What every stage of one run shares: its id, resolved plan, backends, secrets and records; and
what is told about the run as it goes (:class:`RunObserver`).

Made once by the run setup (``_run/session.py``) and handed to the scheduler and to each
:class:`pipekit._run.stagerun.StageRun`; nothing in it changes while the run goes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

import attrs

from pipekit._core.results import RunResult, StageResult
from pipekit._core.statcache import FileDigests
from pipekit._dsl.params import Params
from pipekit._dsl.secrets import SecretStore
from pipekit._plan.graph import Plan
from pipekit._plan.resolve import ResolvedPlan, ResolvedStage
from pipekit._run.context import StageRecords, StageScope
from pipekit._run.gates import Gates
from pipekit.backend import ImageBackend, StageBackend

__all__ = ["CacheLookup", "Releases", "Run", "RunObserver"]

#: Looks a cache key up: (the run that stored it, the stored output as JSON), or None.
CacheLookup = Callable[[str], "tuple[str, str] | None"]


class Releases:
    """Removals of finished stages' containers, done off the critical path (a dependent stage
    starts without waiting for them); the run waits for all of them before it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def submit(self, release: Callable[[], None]) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pipekit-release")
            self._pending.append(self._pool.submit(release))

    def wait(self, timeout: float = 120.0) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            pool, self._pool = self._pool, None
        wait(pending, timeout=timeout)
        if pool is not None:
            pool.shutdown(wait=False)


@attrs.define
class Run:
    """One run's shared parts. ``backend`` takes container stages (and host stages when it
    ``runs_host_stages``); ``host`` takes the other host stages; ``images`` serves ``ctx.docker``."""

    run_id: str
    resolved: ResolvedPlan
    backend: StageBackend
    host: StageBackend
    images: ImageBackend
    secrets: SecretStore
    params: Params
    records: StageRecords
    log: Any
    cache: CacheLookup | None = None
    record_outputs: bool = False
    clock: Callable[[], float] = time.monotonic
    releases: Releases = attrs.field(factory=Releases)
    keep_failed: bool = False  # a failed stage's container stays, for `pipekit shell`
    shared: Any = None  # the shared cache (--cache-registry): a pipekit._run.sharedcache.SharedCache
    #: the files cache keys are made of, each hashed once per run (stages that run hold ``writing()``)
    files: FileDigests = attrs.field(
        default=attrs.Factory(lambda self: FileDigests(self.resolved.workspace), takes_self=True)
    )
    gates: Gates = attrs.field(factory=lambda: Gates(""))  # approval gates and environments

    def backend_for(self, r: ResolvedStage) -> StageBackend:
        """Where a stage runs: chosen by capability, never by type."""
        if r.on_host and not self.backend.capabilities.runs_host_stages:
            return self.host
        return self.backend

    def scope_for(self, stage: str, *, workspace: Path, env: Mapping[str, str], log: Any, **more: Any) -> StageScope:
        """What a context of this run is made from: the run's parts, and what ``stage``'s own are."""
        return StageScope(
            stage=stage,
            run_id=self.run_id,
            workspace=workspace,
            env=env,
            log=log,
            images=self.images,
            params=self.params,
            secrets=self.secrets,
            records=self.records,
            image_map=self.resolved.image_map,
            **more,
        )

    def backends(self) -> list[StageBackend]:
        return [self.backend] if self.host is self.backend else [self.backend, self.host]

    def cleanup(self) -> None:
        """Remove whatever the run left on any backend (after the removals under way)."""
        self.releases.wait()
        for b in self.backends():
            try:
                b.cleanup(self.run_id)
            except Exception as e:  # never hide the run's own outcome
                self.log.warning("cleanup failed", backend=b.name, error=str(e))


class RunObserver(Protocol):
    """Told about a run as it goes by the scheduler (the run history and the CI report implement it)."""

    def run_started(self, run_id: str, plan: Plan) -> None: ...

    def stage_started(self, run_id: str, name: str, position: int) -> None: ...

    def stage_finished(self, run_id: str, result: StageResult, position: int) -> None: ...

    def run_finished(self, run_id: str, result: RunResult) -> None: ...
