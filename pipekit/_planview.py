"""``pipekit plan`` (and ``run --dry-run``): what a run would do with each stage, and why.

Each stage is one of: **run**, **skip** (its condition is false, with the values it saw; or it
needs the value of a skipped stage), **cached** (its result is in the stage cache: the stage's
inputs are all known before the run, its upstream stages cached or restored too), **restored**
(``--resume``). For a cached stage that misses, the plan says what changed since the stage's last
cached run: the inputs whose hashes differ (files changed, new or gone; params; environment;
image; upstream outputs; the stage's code).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from pipekit._cache import changed, key_of
from pipekit._outputs import inputs_of
from pipekit._resolve import ResolvedPlan, ResolvedStage
from pipekit._serialize import NotSerializable, loads
from pipekit.backend import Origin
from pipekit.exceptions import PipekitError

__all__ = ["Decision", "decide", "describe_changes"]


@attrs.frozen
class Decision:
    stage: str
    image: str
    needs: tuple[str, ...]
    decision: str  # run, skip, cached, restored
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


def _image_identity(resolved: ResolvedPlan, r: ResolvedStage, images: Any, run_id: str) -> str | None:
    if r.stage.dockerfile:
        return "dockerfile:" + (resolved.workspace / r.stage.dockerfile).read_text()
    if r.image is None:
        return None
    if images is None:
        raise LookupError("its image is not checked here (no engine, or --no-image-check)")
    identity: str | None = images.image_id(Origin(run_id, r.stage.name), r.image)
    return identity


def _cache_decision(
    resolved: ResolvedPlan,
    r: ResolvedStage,
    known: dict[str, Any],
    params: Mapping[str, Any],
    history: Any,
    images: Any,
) -> tuple[str, str | None, Mapping[str, Any] | None]:
    waiting = [u for u in resolved.plan.upstream(r.name) if u not in known]
    if waiting:
        return "run", f"its cache is decided when {', '.join(waiting)} has run: upstream outputs are inputs", None
    if history is None:
        return "run", "no run history yet: nothing cached", None
    try:
        inputs = inputs_of(resolved, r, known, params, _image_identity(resolved, r, images, "plan"))
    except (LookupError, NotSerializable, OSError, PipekitError) as e:
        return "run", f"the cache is decided when the run starts: {e}", None
    hit = history.cache_get(key_of(inputs))
    if hit is not None:
        known[r.name] = loads(hit[1])
        return "cached", f"the result of run {hit[0]}", None
    last = _last_inputs(history, r.name)
    if last is None:
        return "run", "cache miss: never cached", None
    diff = changed(last[1], inputs)
    return "run", f"cache miss; changed since run {last[0]}: {describe_changes(diff)}", diff


def decide(resolved: ResolvedPlan, params: Mapping[str, Any], info: Any, history: Any, images: Any) -> list[Decision]:
    """Each stage's decision, in run order."""
    known: dict[str, Any] = {}  # outputs known before the run: restored and cached stages
    out = []
    for name in resolved.order:
        r = resolved[name]
        base: dict[str, Any] = {
            "stage": name,
            "image": r.describe_image(),
            "needs": tuple(resolved.plan.upstream(name)),
        }
        if r.skip is not None:
            why = r.skip
            if why.startswith("condition not met"):
                seen = ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))
                branch = f"branch {info.branch!r}" if info.branch else "no branch"
                why += f" ({branch}" + (f"; params {seen})" if seen else ")")
            out.append(Decision(**base, decision="skip", why=why))
        elif r.restore is not None:
            known[name] = loads(r.restore[1])
            out.append(Decision(**base, decision="restored", why=f"the result of run {r.restore[0]} (--resume)"))
        elif r.stage.cache is None:
            out.append(Decision(**base, decision="run"))
        else:
            decision, reason, diff = _cache_decision(resolved, r, known, params, history, images)
            out.append(Decision(**base, decision=decision, why=reason, changed=diff))
    return out
