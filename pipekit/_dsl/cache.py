"""Stage caching: ``cache=pk.inputs(...)`` and the key a stage's result is stored under."""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pipekit._core.statcache import FileDigests, FileSet, KnownFiles, files_digest
from pipekit._dsl.conditions import check_glob, glob_filter
from pipekit._dsl.secrets import Secret

__all__ = ["CacheInputs", "changed", "inputs", "key_of", "stage_inputs", "stage_key", "whole_files"]


@attrs.frozen
class CacheInputs:
    """What a cached stage's result depends on besides its code, image, params and upstream outputs."""

    files: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    #: the files the stage makes that a registry cache hit restores (``--cache-registry``)
    outputs: tuple[str, ...] = ()


def inputs(*files: str, env: Sequence[str] = (), outputs: Sequence[str] = ()) -> CacheInputs:
    """``cache=pk.inputs("requirements.txt", "src/**", env=["PYTHON_VERSION"], outputs=["dist/**"])``:
    file globs (relative to the pipeline's folder) and environment variables the stage's result
    depends on; ``outputs``: globs of the files the stage makes, restored with its result from a
    shared cache (``--cache-registry``) on another machine."""
    for f in files:
        check_glob(f, "pk.inputs")
    if isinstance(env, str):
        env = [env]
    if isinstance(outputs, str):
        outputs = [outputs]
    for f in outputs:
        check_glob(f, "pk.inputs(outputs=...)")
    return CacheInputs(tuple(files), tuple(env), tuple(outputs))


def _source(fn: Any) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return repr((code.co_code, code.co_consts)) if code is not None else repr(fn)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_inputs(
    *,
    pipeline: str,
    stage: str,
    fn: Any,
    image: str | None,
    env: Mapping[str, Any],
    params: Mapping[str, Any],
    upstream: Mapping[str, str],
    spec: CacheInputs,
    workspace: Path,
    environ: Mapping[str, str],
    matrix: Mapping[str, Any] | None = None,
    digests: FileDigests | None = None,
) -> dict[str, Any]:
    """Everything a stage's result depends on, each part by its hash (no value is kept: the
    history stores these to say what changed when the cache misses).

    ``image`` is the image id (not its name), ``upstream`` the serialized outputs of the stages
    it depends on, ``env`` the stage's environment with secrets by name (never by value).
    ``digests``: the run's file fingerprints (each file hashed once per run, only when its stat
    changed: :mod:`pipekit._core.statcache`); files are read as ctx.archive reads them. The
    files part may be a :class:`KnownFiles` (known by its digest alone): :func:`whole_files` makes
    it by name.
    """
    files: Mapping[str, str] | KnownFiles = {}
    if spec.files:
        files = (digests or FileDigests(workspace)).fingerprint(spec.files, glob_filter)
    return {
        "pipeline": pipeline,
        "stage": stage,
        "source": _digest(_source(fn)),
        "image": _digest(image),
        "env": {k: _digest(f"secret:{v.name}" if isinstance(v, Secret) else v) for k, v in env.items()},
        "params": {k: _digest(v) for k, v in params.items()},
        "matrix": {k: _digest(v) for k, v in (matrix or {}).items()},
        "upstream": {k: _digest(v) for k, v in upstream.items()},
        "environ": {name: _digest(environ.get(name)) for name in spec.env},
        "files": files,
    }


def key_of(inputs: Mapping[str, Any]) -> str:
    """The cache key of a stage's inputs. Files count by one hash of their names and digests
    (made once for a set of files several stages name: :class:`pipekit._core.statcache.FileSet`)."""
    files = inputs.get("files") or {}
    part = files.digest() if isinstance(files, (FileSet, KnownFiles)) else files_digest(files)
    return hashlib.sha256(json.dumps({"v": 3, **inputs, "files": part}, sort_keys=True).encode()).hexdigest()


def whole_files(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with its files by name (what the history keeps, what :func:`changed` compares),
    made from the workspace as it is now when they were known by their digest alone."""
    files = inputs.get("files")
    return {**inputs, "files": files.whole()} if isinstance(files, KnownFiles) else inputs


def stage_key(**kwargs: Any) -> str:
    """The cache key: a hash of everything the stage's result depends on (:func:`stage_inputs`)."""
    return key_of(stage_inputs(**kwargs))


def changed(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """What differs between two stage_inputs: the names of params, env, upstream stages... whose
    hashes differ, and the files changed, new or gone."""
    out: dict[str, Any] = {}
    for part in ("source", "image"):
        if before.get(part) != now.get(part):
            out[part] = True
    for part in ("env", "params", "matrix", "upstream", "environ"):
        old, new = before.get(part) or {}, now.get(part) or {}
        names = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        if names:
            out[part] = names
    old_files, new_files = before.get("files") or {}, now.get("files") or {}
    files = {
        "changed": sorted(f for f in old_files if f in new_files and old_files[f] != new_files[f]),
        "new": sorted(f for f in new_files if f not in old_files),
        "gone": sorted(f for f in old_files if f not in new_files),
    }
    if any(files.values()):
        out["files"] = {k: v for k, v in files.items() if v}
    return out
