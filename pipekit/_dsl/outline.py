"""A pipeline.py read without running it, for shell completion: the names of its stages, its
parameters and the images it names, found in its syntax tree (``@pk.stage`` / ``@pipeline.stage``
functions and their ``name=``, ``pk.param("NAME")``, string ``image=`` arguments).

Completion runs on every TAB, so this must be fast and must not run the user's code: what a
pipeline computes (stages made in a loop, names built at run time) is not seen here; the
completion adds the stages of the last recorded run of the same file.
"""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["Outline", "outline"]


class Outline:
    """What a pipeline.py names, in the order it names them (no duplicates)."""

    def __init__(self) -> None:
        self.stages: dict[str, None] = {}
        self.params: dict[str, None] = {}
        self.images: dict[str, None] = {}


def _callee(node: ast.expr) -> str:
    """The last name of what is called or used as a decorator: ``pk.stage(...)`` → ``stage``."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _text(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _keyword(call: ast.Call, name: str) -> str | None:
    return next((_text(k.value) for k in call.keywords if k.arg == name), None)


def _stage_name(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    for deco in fn.decorator_list:
        if _callee(deco) == "stage":
            named = _keyword(deco, "name") if isinstance(deco, ast.Call) else None
            return named or fn.name
    return None


def outline(path: Path) -> Outline:
    """The names ``path`` declares; an empty outline when it cannot be read or parsed."""
    found = Outline()
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return found
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = _stage_name(node)
            if name:
                found.stages[name] = None
        elif isinstance(node, ast.Call):
            called = _callee(node)
            if called == "param" and node.args and _text(node.args[0]):
                found.params[str(_text(node.args[0]))] = None
            image = _keyword(node, "image")
            if image:
                found.images[image] = None
    return found
