"""Stage outputs as JSON, for --resume and the stage cache.

Plain data (None, bool, int, float, str, lists, tuples, dicts with string keys) and pipekit's own
values (pk.Image, pk.CommandResult, pk.MatrixOutputs) are stored; anything else is reported at the
stage that returned it, with its type.
"""

from __future__ import annotations

import json
from typing import Any

from pipekit._dsl.matrix import MatrixOutputs
from pipekit.backend import CommandResult, Image

__all__ = ["NotSerializable", "dumps", "loads"]


class NotSerializable(TypeError):
    def __init__(self, type_name: str, where: str) -> None:
        super().__init__(
            f"a {type_name}{where}, which pipekit cannot store for --resume or the cache; return plain data"
            " (str, int, float, bool, None, lists, dicts with str keys) or a pk.Image"
        )
        self.type_name = type_name


def _encode(value: Any, where: str = "") -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Image):
        image = {"__pipekit__": "Image", "id": value.id, "tags": list(value.tags)}
        return {**image, "remote": value.remote} if value.remote else image
    if isinstance(value, CommandResult):
        return {
            "__pipekit__": "CommandResult",
            "command": value.command,
            "exit_code": value.exit_code,
            "stdout": value.stdout,
            "stderr": value.stderr,
            "duration_s": value.duration_s,
        }
    if isinstance(value, MatrixOutputs):
        return {
            "__pipekit__": "MatrixOutputs",
            "items": {k: _encode(v, f" in [{k!r}]") for k, v in value.items()},
            "combos": {k: dict(value.combination(k)) for k in value},
        }
    if isinstance(value, tuple):
        return {"__pipekit__": "tuple", "items": [_encode(v, f" in item {i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f" in item {i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotSerializable("dict with non-str keys", where)
        if "__pipekit__" in value:
            raise NotSerializable("dict with the reserved key '__pipekit__'", where)
        return {k: _encode(v, f" in [{k!r}]") for k, v in value.items()}
    raise NotSerializable(type(value).__name__, where)


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("__pipekit__")
    if kind == "Image":
        return Image(id=value["id"], tags=tuple(value["tags"]), remote=value.get("remote"))
    if kind == "CommandResult":
        return CommandResult(
            value["command"], value["exit_code"], value["stdout"], value["stderr"], value["duration_s"]
        )
    if kind == "MatrixOutputs":
        return MatrixOutputs({k: _decode(v) for k, v in value["items"].items()}, value["combos"])
    if kind == "tuple":
        return tuple(_decode(v) for v in value["items"])
    return {k: _decode(v) for k, v in value.items()}


def dumps(value: Any) -> str:
    """JSON text of a stage output; raises NotSerializable naming the type that cannot be stored."""
    return json.dumps(_encode(value), sort_keys=True, separators=(",", ":"))


def loads(text: str) -> Any:
    return _decode(json.loads(text))
