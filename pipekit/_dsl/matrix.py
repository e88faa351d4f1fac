"""Matrix stages: one stage instance per combination (GitHub's ``strategy.matrix``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pipekit.exceptions import PipelineError

__all__ = ["MatrixOutputs", "combination_key", "combinations", "instance_name"]


def _matches(combo: Mapping[str, Any], partial: Mapping[str, Any]) -> bool:
    return all(k in combo and str(combo[k]) == str(v) for k, v in partial.items())


def combinations(
    matrix: Mapping[str, Sequence[Any]],
    exclude: Sequence[Mapping[str, Any]] = (),
    include: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Every combination of the matrix, less ``exclude``, with ``include`` applied like GitHub's."""
    keys = list(matrix)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(matrix[k] for k in keys))]
    combos = [c for c in combos if not any(_matches(c, e) for e in exclude)]
    for extra in include:
        original = {k: v for k, v in extra.items() if k in matrix}
        added = {k: v for k, v in extra.items() if k not in matrix}
        targets = [c for c in combos if _matches(c, original)] if original or not combos else []
        if targets and added:
            for c in targets:
                c.update(added)
        elif not targets or not added:
            if not any(_matches(c, extra) for c in combos):
                ordered = {k: extra[k] for k in keys if k in extra}
                combos.append({**ordered, **{k: v for k, v in extra.items() if k not in ordered}})
    return combos


def combination_key(combo: Mapping[str, Any]) -> str:
    """``python=3.10,db=pg``: how a combination is named."""
    return ",".join(f"{k}={v}" for k, v in combo.items())


def instance_name(stage: str, combo: Mapping[str, Any]) -> str:
    return f"{stage}[{combination_key(combo)}]"


def validate_matrix(matrix: Any, where: str, stage: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(matrix, Mapping) or not matrix:
        raise PipelineError(
            f"Stage '{stage}': matrix= takes a mapping of names to lists of values, like"
            " {'python': ['3.10', '3.11']}",
            stage=stage,
            location=where,
        )
    out = {}
    for key, values in matrix.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise PipelineError(
                f"Stage '{stage}': matrix['{key}'] must be a non-empty list of values, got {values!r}",
                stage=stage,
                location=where,
            )
        out[str(key)] = tuple(values)
    return out


class MatrixOutputs(Mapping[str, Any]):
    """What a stage receives from a matrix stage: each combination's output.

    Keys are combination names (``"python=3.10,db=pg"``); a dict of the values works too:
    ``outputs[{"python": "3.10", "db": "pg"}]``.
    """

    def __init__(self, items: Mapping[str, Any], combos: Mapping[str, Mapping[str, Any]]) -> None:
        self._items = dict(items)
        self._combos = dict(combos)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, Mapping):
            want = {str(k): str(v) for k, v in key.items()}
            for name, combo in self._combos.items():
                if {str(k): str(v) for k, v in combo.items()} == want:
                    return self._items[name]
            raise KeyError(key)
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def combination(self, key: str) -> Mapping[str, Any]:
        return self._combos[key]

    def __repr__(self) -> str:
        return f"MatrixOutputs({self._items!r})"
