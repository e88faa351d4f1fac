"""Stage outputs: the cache key a result is stored under, cache hits, and what may be stored.

An output is stored (for ``--resume`` and the stage cache) only when it serialises to JSON and
holds no secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pipekit._cache import key_of, stage_inputs
from pipekit._resolve import ResolvedPlan, ResolvedStage
from pipekit._results import StageResult, StageStatus
from pipekit._run import Run
from pipekit._serialize import NotSerializable, dumps, loads
from pipekit.backend import Image, Origin
from pipekit.exceptions import PipekitError

__all__ = ["cache_key", "cached_result", "inputs_of", "restored_result", "storable"]


def _image_identity(run: Run, r: ResolvedStage, outputs: Mapping[str, Any]) -> str | None:
    s = r.stage
    if s.image_from:
        made = outputs.get(s.image_from)
        return made.id if isinstance(made, Image) else None
    if s.dockerfile:
        return "dockerfile:" + (run.resolved.workspace / s.dockerfile).read_text()
    if r.image is None:
        return None
    return run.images.image_id(Origin(run.run_id, s.name), r.image)


def inputs_of(
    resolved: ResolvedPlan, r: ResolvedStage, outputs: Mapping[str, Any], params: Mapping[str, Any], image: str | None
) -> dict[str, Any]:
    """A cached stage's inputs (:func:`pipekit._cache.stage_inputs`) given its image's identity and
    its upstream stages' outputs; NotSerializable or OSError when one cannot be read."""
    s, plan = r.stage, resolved.plan
    assert s.cache is not None
    return stage_inputs(
        pipeline=plan.pipeline.name,
        stage=s.name,
        fn=s.fn,
        image=image,
        env=r.env,
        params=dict(params),
        upstream={d: dumps(outputs.get(d)) for d in plan.upstream(s.name)},
        spec=s.cache,
        workspace=resolved.workspace,
        environ=os.environ,
        matrix=s.matrix_values,
    )


def cache_key(run: Run, r: ResolvedStage, outputs: Mapping[str, Any], log: Any) -> tuple[str, dict[str, Any]] | None:
    """The stage's cache key and its inputs, or None when it has none or one cannot be made (it
    then just runs)."""
    if r.stage.cache is None:
        return None
    try:
        inputs = inputs_of(run.resolved, r, outputs, run.params, _image_identity(run, r, outputs))
    except (NotSerializable, OSError, PipekitError) as e:
        log.info("stage not cached", reason=str(e))
        return None
    return key_of(inputs), inputs


def cached_result(run: Run, name: str, key: str, started: float) -> StageResult | None:
    """The stored result for ``key``, as this stage's result; None on a miss."""
    if run.cache is None:
        return None
    hit = run.cache(key)
    if hit is None:
        return None
    from_run, stored = hit
    return StageResult(
        name,
        StageStatus.CACHED,
        0.0,
        started,
        run.clock(),
        reason=f"cache hit: result of run {from_run}",
        output=loads(stored),
        cache_key=key,
        output_json=stored,
    )


def restored_result(name: str, restore: tuple[str, str]) -> StageResult:
    from_run, stored = restore
    return StageResult(
        name,
        StageStatus.RESTORED,
        0.0,
        reason=f"restored from run {from_run}",
        output=loads(stored),
        output_json=stored,
    )


def storable(run: Run, name: str, value: Any, log: Any) -> str | None:
    """The output as JSON when it can be stored: serialisable, and holding no secret."""
    if not run.record_outputs:
        return None
    try:
        text = dumps(value)
    except NotSerializable as e:
        log.warning("output not stored", reason=f"Stage '{name}' returned {e}")
        return None
    if run.secrets.masker.mask(text) != text:
        log.warning("output not stored", reason=f"Stage '{name}' returned a value that contains a secret")
        return None
    return text
