"""Planning stays linear: the fast reading of stage signatures and the collector held off."""

from __future__ import annotations

import gc
import inspect
from pathlib import Path
from typing import Any

import pytest

import pipekit as pk
from pipekit._dsl.signature import Parameter, _parameters, _plain_parameters
from pipekit.exceptions import PipelineLoadError


def _slow(fn: Any) -> tuple[Parameter, ...]:
    """What inspect.signature says, the way _parameters read it before the fast path."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        ann = None if p.annotation is p.empty else p.annotation
        is_ctx = p.name in ("ctx", "context") or getattr(ann, "__name__", None) == "Context" or ann == "pk.Context"
        out.append(Parameter(p.name, is_ctx, p.default is not p.empty))
    return tuple(out)


def a(ctx): ...  # noqa: ANN001, ANN201
def b(c: pk.Context, build, test=1): ...  # noqa: ANN001, ANN201
def c(c: "pk.Context", *, build, lint=None, other=2): ...  # noqa: ANN001, ANN201, F821, UP037
def d(ctx, x, y, z=3, *, w): ...  # noqa: ANN001, ANN201


@pytest.mark.parametrize("fn", [a, b, c, d, lambda ctx, up=None: None])
def test_parameters_read_from_the_code_object_match_the_signature(fn: Any) -> None:
    fast = _plain_parameters(fn)
    assert fast is not None
    assert fast == _slow(fn) == _parameters(fn, "s", "here")


def test_functions_the_fast_path_does_not_read_still_get_their_clear_errors() -> None:
    def variadic(ctx, *rest): ...  # noqa: ANN001, ANN002, ANN202

    def positional(ctx, /, up): ...  # noqa: ANN001, ANN202

    assert _plain_parameters(variadic) is None and _plain_parameters(positional) is None
    with pytest.raises(pk.PipelineError, match=r"takes \*rest"):
        _parameters(variadic, "s", "here")
    with pytest.raises(pk.PipelineError, match="positional-only parameter 'ctx'"):
        _parameters(positional, "s", "here")


def test_the_collector_is_back_on_after_loading_and_planning_and_after_a_failed_load(tmp_path: Path) -> None:
    assert gc.isenabled()
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n\n@pk.stage\ndef a(ctx):\n    pass\n")
    pk.plan(pk.load(tmp_path / "pipeline.py"))
    assert gc.isenabled()
    (tmp_path / "broken.py").write_text("raise RuntimeError('no')\n")
    with pytest.raises(PipelineLoadError):
        pk.load(tmp_path / "broken.py")
    assert gc.isenabled()
