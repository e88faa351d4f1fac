"""Pipeline parameters: ``pk.param(name, default=..., help=...)``, set with ``--param name=value``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from pipekit.exceptions import ParameterError, PipelineError

__all__ = ["Param", "Params", "param", "resolve_params"]

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}


@attrs.frozen
class Param:
    """A declared parameter. Its type is its default's (str, bool, int or float)."""

    name: str
    default: Any = None
    help: str = ""

    @property
    def type_name(self) -> str:
        return type(self.default).__name__ if self.default is not None else "str"

    def convert(self, text: str) -> Any:
        kind: type = type(self.default) if self.default is not None else str
        try:
            if kind is bool:
                lowered = text.strip().lower()
                if lowered in _TRUE:
                    return True
                if lowered in _FALSE:
                    return False
                raise ValueError(text)
            if kind in (int, float):
                return kind(text)
            return text
        except ValueError:
            raise ParameterError(
                f"--param {self.name}={text!r}: expected {self.type_name}"
                + (" (true/false, yes/no, 1/0)" if kind is bool else "")
            ) from None


def param(name: str, default: Any = None, help: str = "") -> Param:
    """Declare a pipeline parameter, read in stages as ``ctx.params.NAME``."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise PipelineError(f"a parameter's name must be a Python identifier, got {name!r}")
    if default is not None and not isinstance(default, (str, bool, int, float)):
        raise PipelineError(
            f"parameter '{name}': default must be a str, bool, int or float, got {type(default).__name__}"
        )
    return Param(name, default, help)


class Params(Mapping[str, Any]):
    """The run's parameter values: ``ctx.params.registry`` or ``ctx.params["registry"]``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            known = ", ".join(sorted(self._values)) or "none"
            raise AttributeError(f"no parameter '{name}' is declared (declared: {known})") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"


def resolve_params(declared: Iterable[Param], given: Mapping[str, str]) -> Params:
    """Defaults overlaid with ``--param`` values, converted to each parameter's type."""
    by_name = {p.name: p for p in declared}
    for name in given:
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none are declared"
            raise ParameterError(
                f"--param {name}: no such parameter (declared: {known}). Declare it in the"
                f" pipeline with {name.upper() if name.isidentifier() else 'X'} = pk.param({name!r}, default=...)"
            )
    return Params({n: p.convert(given[n]) if n in given else p.default for n, p in by_name.items()})


def parse_param_args(items: Iterable[str]) -> dict[str, str]:
    values = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ParameterError(f"--param takes NAME=VALUE, got {item!r}")
        values[name.strip()] = value
    return values
