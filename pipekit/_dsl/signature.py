"""What a stage function takes: ``ctx`` and the names of the stages whose results it receives."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs

from pipekit.exceptions import StageSignatureError

__all__ = ["CONTEXT_PARAMETER_NAMES", "Parameter"]

CONTEXT_PARAMETER_NAMES = ("ctx", "context")


@attrs.frozen
class Parameter:
    """One parameter of a stage function and what fills it."""

    name: str
    is_context: bool
    has_default: bool


def _is_context(name: str, annotation: Any) -> bool:
    return (
        name in CONTEXT_PARAMETER_NAMES
        or (isinstance(annotation, str) and annotation.rsplit(".", 1)[-1] == "Context")
        or getattr(annotation, "__name__", None) == "Context"
    )


#: code flags of a function that takes *args or **kwargs
_VARIADIC = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS


def _plain_parameters(fn: Any) -> tuple[Parameter, ...] | None:
    """The parameters of a plain function read from its code object (``inspect.signature`` costs
    50 µs a stage, which 10,000 stages notice); None for anything else, or anything to complain
    about, which :func:`_parameters` then looks at the slow way."""
    code = getattr(fn, "__code__", None)
    if (
        code is None
        or inspect.ismethod(fn)
        or hasattr(fn, "__wrapped__")
        or hasattr(fn, "__signature__")
        or code.co_flags & _VARIADIC
        or code.co_posonlyargcount
    ):
        return None
    positional = code.co_argcount
    names = code.co_varnames[: positional + code.co_kwonlyargcount]
    with_default = set(names[positional - len(fn.__defaults__ or ()) : positional]) | set(fn.__kwdefaults__ or ())
    annotations = getattr(fn, "__annotations__", None) or {}
    return tuple(Parameter(n, _is_context(n, annotations.get(n)), n in with_default) for n in names)


def _parameters(fn: Callable[..., Any], stage_name: str, location: str) -> tuple[Parameter, ...]:
    plain = _plain_parameters(fn)
    if plain is not None:
        return plain
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise StageSignatureError(
                f"Stage '{stage_name}' takes *{p.name}; stage functions take `ctx` and the names of"
                " the stages whose results they need, nothing variadic",
                stage=stage_name,
                location=location,
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise StageSignatureError(
                f"Stage '{stage_name}' has a positional-only parameter '{p.name}'; pipekit passes"
                " stage results by name",
                stage=stage_name,
                location=location,
            )
        annotation = None if p.annotation is p.empty else p.annotation
        params.append(Parameter(p.name, _is_context(p.name, annotation), p.default is not p.empty))
    return tuple(params)
