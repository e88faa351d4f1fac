"""``pipekit plan`` (and ``run --dry-run``): what a run would do with each stage, and why.

Each stage is one of: **run**, **skip** (its condition is false, with the values it saw; or it
needs the value of a skipped stage), **cached** (its result is in the stage cache: the stage's
inputs are all known before the run, its upstream stages cached or restored too), **restored**
(``--resume``), **maybe-cached** (its cache key needs the output of an upstream stage that runs:
cached if that output is what it was). For a cached stage that misses, the plan says what
changed since the stage's last cached run: the inputs whose hashes differ (files changed, new
or gone; params; environment; image; upstream outputs; the stage's code), or that an image its
stored result names is no longer in the engine. **fail**: its condition raised; the run fails
it (and skips what needs it) before anything starts.

The decisions are made by the run's own functions (:mod:`pipekit._run.outputs`), with the run's own
request (params from the command line, ``PIPEKIT_PARAM`` and ``[tool.pipekit]``; ``--resume``;
``--no-cache``), so the plan says what the run then does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from pipekit._core.statcache import FileDigests
from pipekit._dsl.cache import changed
from pipekit._plan.resolve import ResolvedPlan, ResolvedStage
from pipekit._run.outputs import take_cached, take_restored
from pipekit._run.run import CacheLookup
from pipekit._run.serialize import loads
from pipekit.backend import ImageBackend
from pipekit.exceptions import PipekitError

if TYPE_CHECKING:
    from pipekit._run.session import RunSetup
    from pipekit._run.sharedcache import PlanRemote

__all__ = ["Decision", "PlanLookup", "decide", "describe_changes", "plan_decisions"]


@attrs.frozen
class Decision:
    stage: str
    image: str
    needs: tuple[str, ...]
    #: run, skip, cached, restored, maybe-cached (its key needs the output of a stage that runs),
    #: fail (its condition raised: the run fails it before anything starts)
    decision: str
    why: str | None = None
    changed: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self).items() if v not in (None, {})}


def describe_changes(diff: Mapping[str, Any]) -> str:
    parts = []
    files = diff.get("files") or {}
    for kind in ("changed", "new", "gone"):
        if files.get(kind):
            parts.append(f"files {kind}: {', '.join(files[kind][:5])}" + (" ..." if len(files[kind]) > 5 else ""))
    names = {"params": "params", "env": "env", "environ": "environment", "upstream": "output of", "matrix": "matrix"}
    for key, label in names.items():
        if diff.get(key):
            parts.append(f"{label} {', '.join(diff[key])}")
    if diff.get("image"):
        parts.append("the image")
    if diff.get("source"):
        parts.append("the stage's code")
    return "; ".join(parts) or "nothing the cache compares (the key's format changed)"


def _last_inputs(history: Any, stage: str) -> tuple[str, Mapping[str, Any]] | None:
    """The inputs of the stage's most recent cached result, and the run that stored it."""
    for row in history.cache_entries():
        if row.stage != stage:
            continue
        try:
            text = history.run_file(row.run_id, "cache_inputs.jsonl").read_text()
        except OSError:
            return None
        for line in reversed(text.splitlines()):
            entry = json.loads(line)
            if entry.get("stage") == stage and entry.get("key") == row.key:
                return row.run_id, entry["inputs"]
        return None
    return None


@attrs.frozen
class PlanLookup:
    """What the plan decides with, as the run would: its params, the engine (None: images are not
    checked) and the stage cache (None: no history, or --no-cache)."""

    run_id: str
    resolved: ResolvedPlan
    params: Mapping[str, Any]
    images: ImageBackend | None
    cache: CacheLookup | None
    files: FileDigests = attrs.field(
        default=attrs.Factory(lambda self: FileDigests(self.resolved.workspace), takes_self=True)
    )
    remote: PlanRemote | None = None  # --cache-registry: the registry's answers


def _miss_why(lookup: PlanLookup, key: str | None, name: str) -> str:
    """A miss, and whether the registry was asked (it is, in the plan's next round)."""
    remote = lookup.remote
    if remote is None or key is None:
        return "cache miss"
    remote.want(key, name)
    if key in remote.asked:
        return "cache miss here and in the registry"
    return "cache miss" if remote.problem is None else f"cache miss (registry not asked: {remote.problem})"


def _cache_decision(
    lookup: PlanLookup, r: ResolvedStage, known: dict[str, Any], history: Any
) -> tuple[str, str | None, Mapping[str, Any] | None]:
    if history is None and lookup.remote is None:
        return "run", "no run history yet: nothing cached", None
    if lookup.cache is None:
        return "run", "--no-cache", None
    waiting = [u for u in lookup.resolved.plan.upstream(r.name) if u not in known]
    if waiting:
        why = f"its cache is decided when {', '.join(waiting)} has run: upstream outputs are inputs"
        return "maybe-cached", why, None
    if lookup.images is None and r.image is not None and not r.stage.dockerfile:
        why = "the cache is decided when the run starts: its image is not checked here (no engine, or --no-image-check)"
        return "maybe-cached", why, None
    taken = take_cached(lookup, r, known)
    if taken.status is not None and taken.output_json is not None:
        known[r.name] = loads(taken.output_json)
        entry = lookup.remote.hits.get(taken.key or "") if lookup.remote is not None else None
        if entry is not None and (history is None or history.cache_get(taken.key) is None):
            return "registry-cached", f"run {entry.run_id} on host {entry.host}", None
        return "cached", f"the result of run {taken.from_run}", None
    if taken.why != "cache miss" or taken.inputs is None:
        return "run", taken.why, None
    miss = _miss_why(lookup, taken.key, r.name)
    last = _last_inputs(history, r.name) if history is not None else None
    if last is None:
        return "run", f"{miss}: never cached" if history is not None else miss, None
    diff = changed(last[1], taken.inputs)
    return "run", f"{miss}; changed since run {last[0]}: {describe_changes(diff)}", diff


def _skip_why(r: ResolvedStage, params: Mapping[str, Any], info: Any) -> str:
    why = r.skip or ""
    if why.startswith("condition not met"):
        seen = ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))
        branch = f"branch {info.branch!r}" if info.branch else "no branch"
        why += f" ({branch}" + (f"; params {seen})" if seen else ")")
    return why


def decide(lookup: PlanLookup, info: Any, history: Any) -> list[Decision]:
    """Each stage's decision, in run order, made by the run's own functions (take_restored,
    take_cached) with what is known before the run: restored and cached upstream outputs."""
    resolved = lookup.resolved
    known: dict[str, Any] = {}  # outputs known before the run: restored and cached stages
    failing = resolved.condition_errors  # the run fails these first, and skips what needs them
    doomed = {d: name for name in failing for d in resolved.plan.downstream(name)}
    stopped = f"not started: '{list(failing)[-1]}' failed" if failing else None  # nothing else starts
    out = []
    for name in resolved.order:
        r = resolved[name]
        needs = tuple(resolved.plan.upstream(name))
        base: dict[str, Any] = {"stage": name, "image": r.describe_image(), "needs": needs}
        if name in failing:
            out.append(Decision(**base, decision="fail", why=failing[name]))
            continue
        if name in doomed:
            out.append(Decision(**base, decision="skip", why=f"upstream '{doomed[name]}' failed"))
            continue
        if r.skip is not None:
            known[name] = None  # as in the run: a skipped stage's output is None to what comes after
            out.append(Decision(**base, decision="skip", why=_skip_why(r, lookup.params, info)))
            continue
        not_restored = None
        if r.restore is not None:
            taken = take_restored(lookup, r)
            if taken.status is not None and taken.output_json is not None:
                known[name] = loads(taken.output_json)
                out.append(Decision(**base, decision="restored", why=f"the result of run {taken.from_run} (--resume)"))
                continue
            not_restored = taken.why
        if stopped is not None:
            out.append(Decision(**base, decision="skip", why=stopped))
            continue
        if r.stage.approval is not None:  # its gate decides, as the run goes
            gate = f"once approved ({r.stage.approval.message})"
            not_restored = "; ".join(w for w in (not_restored, gate) if w)
        if r.stage.cache is None:
            out.append(Decision(**base, decision="run", why=not_restored))
            continue
        decision, reason, diff = _cache_decision(lookup, r, known, history)
        why = "; ".join(w for w in (not_restored, reason) if w) or None
        out.append(Decision(**base, decision=decision, why=why, changed=diff))
    return out


def plan_decisions(setup: RunSetup, warn: Callable[[str], None], *, preflight: bool = False) -> list[Decision]:
    """What ``setup``'s run would do with each stage: its history's stage cache and ``--resume``
    looked up as the run does (the same errors: "No run matches"), images asked of the engine
    when it answers; ``preflight``: the run's checks first (secrets, images). Nothing is written."""
    from pipekit._history.store import History

    r = setup.request
    history = None
    if (setup.workspace / ".pipekit" / "pipekit.db").is_file():
        try:
            history = History(setup.workspace, create=False)
        except PipekitError as e:
            warn(f"the stage cache was not looked up: {e}")
    remote: PlanRemote | None = None
    try:
        _, restore = setup.resumed(history)
        resolved = setup.resolved(restore)
        if preflight:
            setup.preflight(resolved, warn)
        images = setup.image_engine(resolved, warn, restoring=bool(restore))
        local = history.cache_get if history is not None and r.use_cache else None
        remote = _plan_remote(setup) if r.use_cache else None  # after the checks: nothing to close before
        lookup = PlanLookup(setup.run_id, resolved, setup.params, images, _either(local, remote), remote=remote)
        while True:  # each round looks up, together, the keys the round before made known
            decisions = decide(lookup, setup.info, history)
            if remote is None or not remote.pending:
                break
            remote.ask()
        if remote is not None and remote.problem is not None:
            warn(f"the cache registry {remote.cache.target}: {remote.problem}; its stages are shown as misses")
        return decisions
    finally:
        if history is not None:
            history.close()
        if remote is not None:
            remote.cache.close()


def _plan_remote(setup: RunSetup) -> PlanRemote | None:
    """The registry the run would read its cache from (``--cache-registry``, mode read or readwrite)."""
    from pipekit._run.sharedcache import PlanRemote, cache_login, open_shared_cache

    r = setup.request
    mode = r.cache_mode or "read"
    if not r.cache_registry or mode not in ("read", "readwrite"):
        return None
    cache = open_shared_cache(r.cache_registry, mode, cache_login(setup.secrets, r.cache_credentials), (2.0, 5.0))
    cache.prepare(setup.plan.pipeline.name)
    return PlanRemote(cache)


def _either(local: CacheLookup | None, remote: PlanRemote | None) -> CacheLookup | None:
    if remote is None:
        return local
    if local is None:
        return remote.get
    return lambda key: local(key) or remote.get(key)
