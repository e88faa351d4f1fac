"""Stage caching: ``cache=pk.inputs(...)`` and the key a stage's result is stored under."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pipekit._conditions import check_glob, glob_match
from pipekit._secrets import Secret

__all__ = ["CacheInputs", "inputs", "matching_files", "stage_key"]


@attrs.frozen
class CacheInputs:
    """What a cached stage's result depends on besides its code, image, params and upstream outputs."""

    files: tuple[str, ...] = ()
    env: tuple[str, ...] = ()


def inputs(*files: str, env: Sequence[str] = ()) -> CacheInputs:
    """``cache=pk.inputs("requirements.txt", "src/**", env=["PYTHON_VERSION"])``: file globs
    (relative to the pipeline's folder) and environment variables the stage's result depends on."""
    for f in files:
        check_glob(f, "pk.inputs")
    if isinstance(env, str):
        env = [env]
    return CacheInputs(tuple(files), tuple(env))


def matching_files(workspace: Path, patterns: Iterable[str]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            path = workspace / pattern
            if path.is_file():
                found.add(path)
            elif path.is_dir():
                found |= {p for p in path.rglob("*") if p.is_file()}
            continue
        for root, dirs, names in os.walk(workspace):
            dirs[:] = [d for d in dirs if d not in (".git", ".pipekit", "__pycache__")]
            for name in names:
                path = Path(root) / name
                if glob_match(pattern, path.relative_to(workspace).as_posix()):
                    found.add(path)
    return sorted(found)


def _source(fn: Any) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return repr((code.co_code, code.co_consts)) if code is not None else repr(fn)


def stage_key(
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
) -> str:
    """The cache key: a hash of everything the stage's result depends on.

    ``image`` is the image id (not its name), ``upstream`` the serialized outputs of the stages
    it depends on, ``env`` the stage's environment with secrets by name (never by value).
    """
    h = hashlib.sha256()

    def part(label: str, value: Any) -> None:
        h.update(label.encode() + b"\0" + json.dumps(value, sort_keys=True, default=str).encode() + b"\0")

    part("v", 1)
    part("pipeline", pipeline)
    part("stage", stage)
    part("source", _source(fn))
    part("image", image)
    part("env", {k: f"secret:{v.name}" if isinstance(v, Secret) else v for k, v in env.items()})
    part("params", dict(params))
    part("matrix", dict(matrix or {}))
    part("upstream", dict(upstream))
    part("environ", {name: environ.get(name) for name in spec.env})
    for path in matching_files(workspace, spec.files):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        part("file", [path.relative_to(workspace).as_posix(), digest])
    return h.hexdigest()
