"""Stage outputs: whether a stage's result is taken from an earlier run, and what may be stored.

One code path decides, for the run and for the plan that predicts it (``pipekit plan``,
``run --dry-run``): a stage is restored by ``--resume``, or taken from the stage cache under the
key of its inputs, unless a ``pk.Image`` the stored result names is no longer in the engine and
cannot be pulled by its registry digest (every fresh CI runner with a restored ``.pipekit``):
then it runs again. An output is stored only when it serialises to JSON and holds no secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from pipekit._core.results import StageResult, StageStatus
from pipekit._core.safefile import read_regular
from pipekit._core.statcache import FileDigests, KnownFiles
from pipekit._dsl.cache import key_of, stage_inputs, whole_files
from pipekit._dsl.matrix import MatrixOutputs
from pipekit._plan.resolve import ResolvedPlan, ResolvedStage
from pipekit._run.run import CacheLookup, Run
from pipekit._run.serialize import NotSerializable, dumps, loads
from pipekit.backend import Image, ImageBackend, Origin
from pipekit.exceptions import PipekitError

__all__ = [
    "Lookup",
    "Taken",
    "gone_image",
    "images_in",
    "inputs_of",
    "storable",
    "take_cached",
    "take_restored",
    "taken_result",
]


class Lookup(Protocol):
    """What deciding whether a stage's result is taken from an earlier run needs: the run has it
    (:class:`pipekit._run.run.Run`), and so does the plan that predicts the run."""

    @property
    def run_id(self) -> str: ...

    @property
    def resolved(self) -> ResolvedPlan: ...

    @property
    def params(self) -> Mapping[str, Any]: ...

    @property
    def images(self) -> ImageBackend | None: ...  # None: images are not checked (a plan without an engine)

    @property
    def cache(self) -> CacheLookup | None: ...  # None: no stage cache (--no-cache, no history)

    @property
    def files(self) -> FileDigests: ...  # the run's file fingerprints (each file hashed once per run)


@attrs.frozen
class Taken:
    """A stage's result taken from an earlier run (``status`` cached or restored), or why the stage
    runs (``status`` None, ``why``). ``key`` and ``inputs``: the stage's cache key, when it has one."""

    status: StageStatus | None
    why: str | None = None
    from_run: str | None = None
    output_json: str | None = None
    key: str | None = None
    inputs: dict[str, Any] | None = attrs.field(default=None, repr=False)


def images_in(value: Any) -> list[Image]:
    """The ``pk.Image`` values in a stage's output (in lists, tuples, dicts, matrix outputs)."""
    if isinstance(value, Image):
        return [value]
    if isinstance(value, MatrixOutputs):
        value = [value[k] for k in value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [image for v in value for image in images_in(v)]
    return []


def gone_image(images: ImageBackend | None, output: Any) -> str | None:
    """The id of the first ``pk.Image`` of a stored output that the engine no longer has and that
    cannot be pulled by its registry digest; None when every one is usable (or nothing is checked)."""
    if images is None:
        return None
    for image in images_in(output):
        if _usable(images, image.id) or (image.remote and _usable(images, image.remote)):
            continue
        return image.id
    return None


def _usable(images: ImageBackend, ref: str) -> bool:
    try:
        return images.image_problem(ref) is None
    except PipekitError:  # the engine cannot be asked: the result is not trusted, the stage runs
        return False


def take_restored(lookup: Lookup, r: ResolvedStage) -> Taken:
    """``--resume``: the stage's stored result, unless an image it names is gone (then it runs)."""
    assert r.restore is not None
    from_run, stored = r.restore
    gone = gone_image(lookup.images, loads(stored))
    if gone is not None:
        return Taken(None, f"not restored: image {gone} is no longer in the engine")
    return Taken(StageStatus.RESTORED, f"restored from run {from_run}", from_run, stored)


def _image_identity(lookup: Lookup, r: ResolvedStage, outputs: Mapping[str, Any]) -> str | None:
    s = r.stage
    if s.image_from:
        made = outputs.get(s.image_from)
        return made.id if isinstance(made, Image) else None
    if s.dockerfile:
        # read without following a link or waiting on a FIFO a stage may have left in its place
        return "dockerfile:" + read_regular(lookup.resolved.workspace / s.dockerfile).decode("utf-8", "replace")
    if r.image is None:
        return None
    if lookup.images is None:
        raise LookupError("its image is not checked here (no engine, or --no-image-check)")
    return lookup.images.image_id(Origin(lookup.run_id, s.name), r.image)


def inputs_of(
    resolved: ResolvedPlan,
    r: ResolvedStage,
    outputs: Mapping[str, Any],
    params: Mapping[str, Any],
    image: str | None,
    files: FileDigests | None = None,
) -> dict[str, Any]:
    """A cached stage's inputs (:func:`pipekit._dsl.cache.stage_inputs`) given its image's identity and
    its upstream stages' outputs; NotSerializable or OSError when one cannot be read. ``files``:
    the run's file fingerprints."""
    s, plan = r.stage, resolved.plan
    assert s.cache is not None
    inputs = stage_inputs(
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
        digests=files,
    )
    if s.cache.outputs:  # what a registry entry holds besides the result is part of what it is
        inputs["outputs"] = sorted(s.cache.outputs)
    return inputs


def take_cached(lookup: Lookup, r: ResolvedStage, outputs: Mapping[str, Any]) -> Taken:
    """The stage cache: the stored result for the stage's key, unless the key cannot be made, it
    misses, or an image the result names is gone. ``outputs``: its upstream stages' outputs."""
    if r.stage.cache is None:
        return Taken(None)
    try:
        image = _image_identity(lookup, r, outputs)
        inputs = inputs_of(lookup.resolved, r, outputs, lookup.params, image, lookup.files)
    except (LookupError, NotSerializable, OSError, PipekitError) as e:
        return Taken(None, f"not cached: {e}")
    key = key_of(inputs)
    hit = lookup.cache(key) if lookup.cache is not None else None
    if hit is None and isinstance(inputs.get("files"), KnownFiles):  # by name, for the history
        inputs = whole_files(inputs)
        key = key_of(inputs)  # the same key, unless a file changed meanwhile
        hit = lookup.cache(key) if lookup.cache is not None else None
    if hit is None:
        return Taken(None, "cache miss", key=key, inputs=inputs)
    from_run, stored = hit
    gone = gone_image(lookup.images, loads(stored))
    if gone is not None:
        inputs = whole_files(inputs)
        return Taken(None, f"cache miss: image {gone} is no longer in the engine", key=key_of(inputs), inputs=inputs)
    return Taken(StageStatus.CACHED, f"cache hit: result of run {from_run}", from_run, stored, key, inputs)


def taken_result(name: str, taken: Taken, started: float | None = None, finished: float | None = None) -> StageResult:
    """A taken result as the stage's result."""
    assert taken.status is not None and taken.output_json is not None
    return StageResult(
        name,
        taken.status,
        0.0,
        started,
        finished,
        reason=taken.why,
        output=loads(taken.output_json),
        cache_key=taken.key,
        output_json=taken.output_json,
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
