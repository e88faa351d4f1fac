"""The shared stage cache in a run (``--cache-registry``): a stage the local cache misses is looked
up in the registry and, on a hit, restored as if it had run here (return value, declared output
files, archived artifacts, test report); a stage that ran is pushed there.

Nothing about the registry ever fails a run: a registry that is down, slow (every request bounded
by a timeout) or refuses is a miss and one warning; after the first unreachable answer the run
stops asking. An entry that does not hold together is a miss and a warning, never a result.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from pipekit._core.results import StageResult, StageStatus
from pipekit._core.testreport import FailedTest, TestReport
from pipekit._dsl.secrets import Credentials, SecretStore
from pipekit._history.remote import Entry, RegistryCache, Tampered, describe, pack_files, restore_files
from pipekit._plan.resolve import ResolvedStage
from pipekit._run.context import StageRecords
from pipekit._run.outputs import Taken, gone_image, images_in
from pipekit._run.serialize import dumps, loads
from pipekit.backend import Image, Origin
from pipekit.exceptions import PipekitError, RegistryError, RegistryUnavailable

__all__ = ["CapturedRecords", "PlanRemote", "SharedCache", "cache_login", "open_shared_cache", "report_of", "tests_of"]

REGISTRY_USER, REGISTRY_PASSWORD = "PIPEKIT_REGISTRY_USER", "PIPEKIT_REGISTRY_PASSWORD"


def cache_login(secrets: SecretStore, credentials: Credentials | None) -> tuple[str, str] | None:
    """The cache's login: a ``pk.Credentials`` given, else PIPEKIT_REGISTRY_USER and _PASSWORD (the
    image pushes' secrets, from the environment or --secrets-file), else none. Both values are masked."""
    if credentials is not None:
        user = secrets.resolve(credentials.username, stage="(cache registry)")
        return user, secrets.resolve(credentials.password, stage="(cache registry)")
    if not secrets.has(REGISTRY_USER) or not secrets.has(REGISTRY_PASSWORD):
        return None
    user = secrets.get(REGISTRY_USER, stage="(cache registry)", mask=False)
    return user, secrets.get(REGISTRY_PASSWORD, stage="(cache registry)")


def open_shared_cache(
    target: str, mode: str, auth: tuple[str, str] | None, timeout: tuple[float, float] | None = None
) -> RegistryCache:
    """The registry cache; ``timeout``: (connect, read) seconds of each request (default: 2 s, and
    ``PIPEKIT_CACHE_TIMEOUT`` or 10 s)."""
    if timeout is None:
        try:
            read = float(os.environ.get("PIPEKIT_CACHE_TIMEOUT") or 10.0)
        except ValueError:
            read = 10.0
        timeout = (min(2.0, read), read)
    return RegistryCache(target, mode, auth, timeout)


def tests_of(report: TestReport) -> dict[str, Any]:
    failed = [{"name": f.name, "message": f.message, "kind": f.kind} for f in report.failed]
    return {
        "tests": report.tests,
        "failures": report.failures,
        "errors": report.errors,
        "skipped": report.skipped,
        "failed": failed,
        "files": list(report.files),
    }


def report_of(data: dict[str, Any]) -> TestReport:
    """A test report from an entry; Tampered when it is not one."""
    try:
        failed = tuple(FailedTest(str(f["name"]), str(f["message"]), str(f["kind"])) for f in data.get("failed", []))
        return TestReport(
            tests=int(data["tests"]),
            failures=int(data["failures"]),
            errors=int(data["errors"]),
            skipped=int(data["skipped"]),
            failed=failed,
            files=tuple(str(f) for f in data.get("files", [])),
        )
    except (KeyError, TypeError, ValueError):
        raise Tampered("its test report is not one") from None


class CapturedRecords:
    """The run's stage records, kept also per stage (after masking) for the stage's cache entry."""

    def __init__(self, inner: StageRecords) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._artifacts: dict[str, list[tuple[str, bytes]]] = {}
        self._tests: dict[str, TestReport] = {}

    def add_artifact(self, stage: str, path: str, data: bytes) -> str:
        with self._lock:
            kept = self._artifacts.setdefault(stage, [])
            kept[:] = [(p, d) for p, d in kept if p != path] + [(path, data)]
        return self.inner.add_artifact(stage, path, data)

    def add_tests(self, stage: str, report: TestReport) -> None:
        with self._lock:
            self._tests[stage] = report
        self.inner.add_tests(stage, report)

    def take(self, stage: str) -> tuple[list[tuple[str, bytes]], TestReport | None]:
        with self._lock:
            return self._artifacts.pop(stage, []), self._tests.pop(stage, None)


class SharedCache:
    """A run's use of a :class:`RegistryCache`."""

    def __init__(
        self, cache: RegistryCache, captured: CapturedRecords | None = None, auth: tuple[str, str] | None = None
    ) -> None:
        self.cache = cache
        self.captured = captured
        self.auth = auth  # the login, for the images that travel with entries
        #: keeps a registry hit in this machine's cache: (key, run id, stage, output JSON)
        self.remember: Callable[[str, str, str, str], None] | None = None
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def start(self, pipeline: str) -> None:
        """The run starts: the registry's tag list and the pipeline's index are read meanwhile."""
        self.cache.prepare(pipeline)

    def finish(self, log: Any) -> None:
        """The run ended (its pushes done): write the pipeline's index, for the runs that follow."""
        try:
            if self.cache.push_index():
                log.debug("cache index pushed", registry=self.cache.target)
        except RegistryError as e:
            self._down(e, log)
        except Exception as e:  # the index is a shortcut: without it, the next run asks key by key
            log.warning("cache index not pushed", reason=f"{type(e).__name__}: {e}")

    def _down(self, e: RegistryError, log: Any) -> None:
        """A registry failure: one warning per kind of failure (the run does not repeat it per stage)."""
        kind = "unavailable" if isinstance(e, RegistryUnavailable) else str(e)
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        if isinstance(e, RegistryUnavailable):
            log.warning("cache registry unavailable", registry=self.cache.target, error=str(e), then="not asked again")
            return
        log.warning("cache registry failed", registry=self.cache.target, error=str(e))

    # -- a local miss, looked up in the registry ---------------------------------------------
    def restore(self, run: Any, r: ResolvedStage, taken: Taken, log: Any) -> Taken:
        """The stage's result from the registry (restored into the run) or ``taken`` (the miss).
        Whatever goes wrong with a hit (the engine asked for its images, its files) is a miss and a
        warning: an exception here would leave the stages prepared after it waiting for ever."""
        try:
            return self._restore(run, r, taken, log)
        except Exception as e:
            log.warning(
                "cache entry refused", registry=self.cache.target, reason=f"{type(e).__name__}: {e}; the stage runs"
            )
            return taken

    def _restore(self, run: Any, r: ResolvedStage, taken: Taken, log: Any) -> Taken:
        if taken.key is None or not self.cache.reads:
            return taken
        name = r.stage.name
        try:
            entry = self.cache.fetch(taken.key, name)
            if entry is None:
                return taken
            output = loads(entry.output_json)
            tests = report_of(entry.tests) if entry.tests is not None else None
        except Tampered as e:
            log.warning("cache entry refused", registry=self.cache.target, reason=f"{e}; the stage runs")
            return taken
        except (ValueError, TypeError) as e:
            log.warning("cache entry refused", registry=self.cache.target, reason=f"its result is not one ({e})")
            return taken
        except RegistryError as e:
            self._down(e, log)
            return taken
        except Exception as e:  # whatever else goes wrong with the registry, the stage runs
            log.warning("cache registry failed", registry=self.cache.target, error=f"{type(e).__name__}: {e}")
            return taken
        finally:
            self._index_refused(log)
        gone = self._pull_images(run, r, output, log)
        if gone is not None:
            return Taken(None, f"registry cache miss: image {gone} is not here", key=taken.key, inputs=taken.inputs)
        if not self._write_back(run, r, entry, tests, log):
            return taken
        why = describe(entry, self.cache.target)
        self._remember(run, taken.key, name, entry.output_json, log)
        return Taken(StageStatus.CACHED, why, entry.run_id, entry.output_json, taken.key, taken.inputs)

    def _index_refused(self, log: Any) -> None:
        """The pipeline's index did not hold together: said once (its entries are asked for one by one)."""
        problem = self.cache.index_problem
        if problem is None:
            return
        with self._lock:
            if "index" in self._warned:
                return
            self._warned.add("index")
        log.warning("cache index refused", registry=self.cache.target, reason=problem)

    def _remember(self, run: Any, key: str, stage: str, output: str, log: Any) -> None:
        """The hit, kept in the local cache under this run (the next run here is a local hit)."""
        if self.remember is None:
            return
        try:
            self.remember(key, run.run_id, stage, output)
        except Exception as e:  # the history could not be written: the hit stands, the run goes on
            log.warning("cache hit not kept locally", error=str(e))

    def _pull_images(self, run: Any, r: ResolvedStage, output: Any, log: Any) -> str | None:
        """The images of a hit's result: usable as they are (in the engine, or their registry gives
        them by digest), else pulled by digest with the cache's login; the id of one that is not.
        An image the engine does not have must be in the cache's own repository, by digest: an
        entry naming any other one is refused (the login would go there, the image is anyone's)."""
        foreign = self._foreign_image(run.images, output)
        if foreign is not None:
            log.warning(
                "cache entry refused",
                registry=self.cache.target,
                reason=f"its image {foreign.remote} is not in {self.cache.target} by digest; the stage runs",
            )
            return foreign.id
        gone = gone_image(run.images, output)
        if gone is None or self.auth is None:
            return gone
        for image in images_in(output):
            if image.id == gone and image.remote:
                try:
                    run.images.pull(Origin(run.run_id, r.stage.name), image.remote, self._docker_auth(), _quiet)
                except PipekitError as e:
                    log.warning("cache image not pulled", image=image.remote, error=str(e))
                    return gone
                log.info("cache image pulled", image=image.remote)
        return gone_image(run.images, output)

    def _foreign_image(self, images: Any, output: Any) -> Image | None:
        """The first image of a hit's result that the engine does not have and that is not named
        ``CACHE_REPO@sha256:...`` (how pipekit pushes them with an entry)."""
        if images is None:
            return None
        own = re.compile(re.escape(self.cache.target) + r"@sha256:[0-9a-f]{64}")
        for image in images_in(output):
            if own.fullmatch(image.remote or "") or not image.remote:
                continue  # an image with no name at all is gone_image's to judge
            try:
                if images.image_problem(image.id) is None:
                    continue
            except PipekitError:
                pass
            return image
        return None

    def _docker_auth(self) -> dict[str, str] | None:
        if self.auth is None:
            return None
        return {"username": self.auth[0], "password": self.auth[1], "serveraddress": self.cache.client.registry}

    def _write_back(self, run: Any, r: ResolvedStage, entry: Entry, tests: TestReport | None, log: Any) -> bool:
        name, patterns = r.stage.name, r.stage.cache.outputs if r.stage.cache else ()
        if entry.files is not None:
            try:
                files = restore_files(run.resolved.workspace, entry.files, patterns)
            except (Tampered, OSError) as e:
                log.warning("cache entry refused", registry=self.cache.target, reason=f"{e}; the stage runs")
                return False
            log.debug("cache files restored", files=len(files))  # the hit itself is said by "stage finished"
        for path, data in entry.artifacts:
            run.records.add_artifact(name, path, data)
        if tests is not None:
            run.records.add_tests(name, tests)
        return True

    # -- a stage that ran, pushed ------------------------------------------------------------
    def push(self, run: Any, r: ResolvedStage, result: StageResult, log: Any) -> None:
        """Pack the stage's entry now (its files as they are when it ends) and push it in the
        background; the run waits for the pushes before it ends."""
        artifacts, report = self.captured.take(r.stage.name) if self.captured is not None else ([], None)
        if not self.cache.writes or result.status != StageStatus.SUCCEEDED:
            return
        if result.cache_key is None or result.output_json is None:
            return
        patterns = r.stage.cache.outputs if r.stage.cache else ()
        try:
            files, names = pack_files(run.resolved.workspace, patterns) if patterns else (None, ())
        except OSError as e:
            log.warning("cache entry not pushed", reason=f"its output files cannot be read ({e})")
            return
        leaked = _holds_secret(run.secrets.masker.values, [files or b"", *(d for _, d in artifacts)])
        if leaked:
            log.warning("cache entry not pushed", reason="its files or artifacts hold a secret's value")
            return
        entry = Entry(
            key=result.cache_key,
            pipeline=run.resolved.plan.pipeline.name,
            stage=r.stage.name,
            run_id=run.run_id,
            output_json=result.output_json,
            files=files,
            file_names=names,
            artifacts=tuple(artifacts),
            tests=tests_of(report) if report is not None else None,
        )
        run.releases.submit(lambda: self._push(run, entry, log))

    def _push(self, run: Any, entry: Entry, log: Any) -> None:
        if not self.cache.writes:
            return
        try:
            entry = self._with_images(run, entry, log)
            digest = self.cache.push(entry)
        except RegistryError as e:
            self._down(e, log)
            return
        except Exception as e:  # an image that could not be tagged, anything else: no entry, the run goes on
            log.warning("cache entry not pushed", reason=f"{type(e).__name__}: {e}")
            return
        log.info("cache entry pushed", registry=self.cache.target, digest=digest[:19])

    def _with_images(self, run: Any, entry: Entry, log: Any) -> Entry:
        """The entry, its result's images pushed to the cache's repository first (tag ``img-ID``),
        each named by digest (``pk.Image.remote``) so that another machine pulls exactly it."""
        output = loads(entry.output_json)
        local = [i for i in images_in(output) if not i.remote]
        if not local:
            return entry
        origin, remote = Origin(run.run_id, entry.stage), {}
        for image in local:
            ref = f"{self.cache.target}:img-{image.id.removeprefix('sha256:')[:24]}"
            run.images.tag(origin, image, ref)
            digest = run.images.push(origin, ref, self._docker_auth(), _quiet)
            remote[image.id] = f"{self.cache.target}@{digest}"
            log.info("cache image pushed", image=image.id[:19], remote=remote[image.id])
        return attrs.evolve(entry, output_json=dumps(_named(output, remote)))


def _quiet(stream: str, line: str) -> None:
    """The progress lines of an image push or pull for the cache: not shown."""


def _named(value: Any, remote: dict[str, str]) -> Any:
    """``value`` with each pk.Image whose id is in ``remote`` named by its registry digest."""
    if isinstance(value, Image):
        return attrs.evolve(value, remote=remote.get(value.id, value.remote))
    if isinstance(value, list):
        return [_named(v, remote) for v in value]
    if isinstance(value, tuple):
        return tuple(_named(v, remote) for v in value)
    if isinstance(value, dict):
        return {k: _named(v, remote) for k, v in value.items()}
    return value


def _holds_secret(values: Sequence[str], blobs: Sequence[bytes]) -> bool:
    needles = [v.encode() for v in values if v]
    return any(n in blob for blob in blobs for n in needles)


class PlanRemote:
    """``pipekit plan``'s registry lookups: the stages the local cache misses are looked up together,
    in parallel, each bounded by the client's timeouts and all of them by ``budget_s``; a hit's
    result makes the keys of the stages after it known, which are then looked up in turn."""

    def __init__(self, cache: RegistryCache, budget_s: float = 10.0) -> None:
        self.cache = cache
        self.budget_s = budget_s
        self.hits: dict[str, Entry] = {}
        self.asked: set[str] = set()
        self.pending: dict[str, str] = {}  # key -> stage, to look up in the next round
        self.problem: str | None = None

    def get(self, key: str) -> tuple[str, str] | None:
        """A cache lookup (:data:`pipekit._run.run.CacheLookup`) answered from the registry's hits."""
        entry = self.hits.get(key)
        return (entry.run_id, entry.output_json) if entry is not None else None

    def want(self, key: str, stage: str) -> None:
        if key not in self.asked and self.problem is None:
            self.pending[key] = stage

    def ask(self) -> bool:
        """Look the pending keys up; whether any of them hit."""
        from concurrent.futures import ThreadPoolExecutor, wait

        pending, self.pending = self.pending, {}
        if not pending or not self.cache.reads:
            return False
        self.asked |= set(pending)
        pool = ThreadPoolExecutor(max_workers=min(8, len(pending)), thread_name_prefix="pipekit-plan-cache")
        futures = {pool.submit(self.cache.fetch, key, stage, layers=False): key for key, stage in pending.items()}
        done, late = wait(futures, timeout=self.budget_s)
        pool.shutdown(wait=False, cancel_futures=True)
        found = False
        for future in done:
            try:
                entry = future.result()
            except Tampered as e:
                self.problem = self.problem or f"an entry was refused ({e})"
                continue
            except RegistryError as e:
                self.problem = self.problem or str(e)
                continue
            if entry is not None:
                self.hits[futures[future]] = entry
                found = True
        if late:
            self.problem = self.problem or f"the registry did not answer within {self.budget_s:g} s"
        return found
