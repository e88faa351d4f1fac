"""Python source for pipeline.py, built from a syntax tree so that it is valid by construction.

Code is made of :mod:`ast` nodes and written with :func:`ast.unparse`; the text of a Jenkinsfile
reaches the result only as a string literal (``repr``-exact, a triple-quoted form only when it
parses back to the same string) or inside a ``#`` comment, each line prefixed. Interpolated text
becomes an f-string only when every expression in it is a plain name (``ctx.params.X``: valid on
every Python from 3.10), else a concatenation. :func:`check_source` checks all of that on the
result.
"""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

__all__ = ["Comment", "Def", "Module", "call", "check_source", "comment", "format_source", "name", "text", "value"]

WIDTH = 100


@attrs.frozen
class Comment:
    """Comment lines (without their ``#``)."""

    lines: tuple[str, ...]


@attrs.frozen
class Def:
    """A function: its decorators (calls or names), name, arguments and body."""

    decorators: tuple[ast.expr, ...]
    name: str
    args: tuple[str, ...]
    body: tuple[ast.stmt | Comment, ...]


Item = ast.stmt | Comment | Def


def _safe(line: str) -> str:
    """A comment line with every character that could end it or upset a reader escaped."""
    return "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in line)


def comment(text: str, *more: str) -> Comment:
    lines: list[str] = []
    for part in (text, *more):
        lines += [_safe(line) for line in part.replace("\r\n", "\n").split("\n")]
    return Comment(tuple(lines))


def name(dotted: str) -> ast.expr:
    """``a.b.c`` as an expression (the names are the converter's own, never the Jenkinsfile's)."""
    first, *rest = dotted.split(".")
    node: ast.expr = ast.Name(first, ast.Load())
    for attr in rest:
        node = ast.Attribute(node, attr, ast.Load())
    return node


def value(v: Any) -> ast.expr:
    """A Python value (str, number, bool, None, list, dict) or an expression as a node."""
    if isinstance(v, ast.expr):
        return v
    if isinstance(v, (list, tuple)):
        return ast.List([value(x) for x in v], ast.Load())
    if isinstance(v, dict):
        return ast.Dict([value(k) for k in v], [value(x) for x in v.values()])
    return ast.Constant(v)


def call(func: str, *args: Any, **kwargs: Any) -> ast.Call:
    return ast.Call(name(func), [value(a) for a in args], [ast.keyword(k, value(v)) for k, v in kwargs.items()])


def _plain(node: ast.expr) -> bool:
    """A name or a chain of attributes: fine inside an f-string on every Python version."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def text(parts: Sequence[tuple[str, Any]]) -> ast.expr:
    """A string from ``("text", str)`` and ``("py", ast.expr)`` parts: a constant, an f-string
    whose expressions are all plain names, or else a concatenation."""
    merged: list[tuple[str, Any]] = []
    for kind, v in parts:
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + v)
        elif kind != "text" or v:
            merged.append((kind, v))
    if not any(kind == "py" for kind, _ in merged):
        return ast.Constant("".join(v for _, v in merged))
    if all(_plain(v) for kind, v in merged if kind == "py"):
        return ast.JoinedStr(
            [ast.Constant(v) if kind == "text" else ast.FormattedValue(v, -1, None) for kind, v in merged]
        )
    pieces = [ast.Constant(v) if kind == "text" else (call("str", v) if _plain(v) else v) for kind, v in merged]
    node = pieces[0]
    for piece in pieces[1:]:
        node = ast.BinOp(node, ast.Add(), piece)
    return node


def _triple(node: ast.expr) -> str | None:
    """A multi-line string constant or f-string as a triple-quoted literal, if that reads back the
    same; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        chunks: list[tuple[str, Any]] = [("text", node.value)]
        prefix = ""
    elif isinstance(node, ast.JoinedStr):
        chunks = [
            ("text", v.value) if isinstance(v, ast.Constant) else ("py", getattr(v, "value", v)) for v in node.values
        ]
        prefix = "f"
    else:
        return None
    body = ""
    for kind, v in chunks:
        if kind == "py":
            body += "{" + ast.unparse(v) + "}"
            continue
        piece = v.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
        body += piece.replace("{", "{{").replace("}", "}}") if prefix else piece
    if "\n" not in body or any(not (c.isprintable() or c in "\t\n") for c in body):
        return None
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    literal = f'{prefix}"""\\\n{body}"""'
    try:
        parsed = ast.parse(literal, mode="eval").body
    except SyntaxError:
        return None
    return literal if ast.dump(parsed) == ast.dump(node) else None


class _Writer:
    """Renders items; long string literals become placeholders, filled in at the end."""

    def __init__(self, source: str) -> None:
        n = 0
        while f"__pk{n}_" in source:
            n += 1
        self.prefix = f"__pk{n}_"
        self.literals: dict[str, str] = {}

    def stmt(self, node: Any, indent: str) -> list[str]:
        if isinstance(node, Comment):
            return [f"{indent}# {line}".rstrip() if line else f"{indent}#" for line in node.lines]
        node = self._multiline(node)
        return [f"{indent}{line}" for line in ast.unparse(node).splitlines()]

    def _multiline(self, node: Any) -> Any:
        writer = self

        class Swap(ast.NodeTransformer):
            def visit_Constant(self, c: ast.Constant) -> ast.expr:  # noqa: N802
                return writer._placeholder(c)

            def visit_JoinedStr(self, j: ast.JoinedStr) -> ast.expr:  # noqa: N802
                return writer._placeholder(j)

        return ast.fix_missing_locations(Swap().visit(copy.deepcopy(node)))

    def _placeholder(self, node: ast.expr) -> ast.expr:
        literal = _triple(node)
        if literal is None:
            return node
        key = f"{self.prefix}{len(self.literals)}"
        self.literals[key] = literal
        return ast.Name(key, ast.Load())

    def expr(self, node: ast.expr, indent: str, head: str = "") -> list[str]:
        """``head + expression``, its arguments one a line when it is too long for one."""
        one = head + ast.unparse(node)
        if len(indent) + len(one) <= WIDTH or not isinstance(node, ast.Call) or "\n" in one:
            return [indent + one]
        lines = [f"{indent}{head}{ast.unparse(node.func)}("]
        lines += [f"{indent}    {ast.unparse(a)}," for a in node.args]
        lines += [f"{indent}    {k.arg}={ast.unparse(k.value)}," for k in node.keywords]
        return [*lines, f"{indent})"]

    def define(self, d: Def) -> list[str]:
        lines: list[str] = []
        for decorator in d.decorators:
            if isinstance(decorator, ast.Call) and not decorator.args and not decorator.keywords:
                decorator = decorator.func  # @pk.stage, not @pk.stage()
            lines += self.expr(self._multiline(decorator), "", "@")
        lines.append(f"def {d.name}({', '.join(d.args)}):")
        body = list(d.body)
        if all(isinstance(s, Comment) for s in body):
            body.append(ast.Pass())
        for s in body:
            lines += self.stmt(s, "    ")
        return lines

    def fill(self, text: str) -> str:
        if not self.literals:
            return text
        return re.sub(re.escape(self.prefix) + r"\d+", lambda m: self.literals[m.group(0)], text)


@attrs.define
class Module:
    """pipeline.py: a docstring, then groups of items separated by blank lines."""

    docstring: str
    groups: list[list[Item]] = attrs.field(factory=list)

    def render(self, source: str) -> str:
        writer = _Writer(source)
        out = [ast.unparse(ast.Module([ast.Expr(ast.Constant(self.docstring))], [])).splitlines()]
        for group in (g for g in self.groups if g):
            lines: list[str] = []
            for item in group:
                if isinstance(item, Def):
                    out += [lines] if lines else []
                    out.append(writer.define(item))
                    lines = []
                elif isinstance(item, ast.Assign) and len(item.targets) == 1:
                    lines += writer.expr(writer._multiline(item.value), "", ast.unparse(item.targets[0]) + " = ")
                else:
                    lines += writer.stmt(item, "")
            out += [lines] if lines else []
        text = ""
        for i, block in enumerate(out):
            if i:
                defs = block[0].startswith(("@", "def ")) or out[i - 1][-1].startswith((" ", "def "))
                text += "\n\n\n" if defs else "\n\n"
            text += "\n".join(block)
        return writer.fill(text) + "\n"


def _fstring_problems(tree: ast.AST) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            for v in node.values:
                if isinstance(v, ast.FormattedValue) and not _plain(v.value):
                    yield f"line {node.lineno}: an f-string expression that is not a plain name"


def check_source(source: str, filename: str = "pipeline.py") -> str | None:
    """None when ``source`` compiles, parses with Python 3.10's grammar and its f-strings hold
    only plain names; else what is wrong, with the line."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
        tree = ast.parse(source, filename, feature_version=(3, 10))
    except SyntaxError as e:
        return f"line {e.lineno}: {e.msg}"
    except ValueError as e:  # a null byte
        return str(e)
    return next(iter(_fstring_problems(tree)), None)


def format_source(text: str) -> str:
    """ruff-formatted when ruff is installed (it is with pipekit's dev tools); as written otherwise."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--isolated", "--line-length", "100"]
            + ["--target-version", "py310", "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return text
    return proc.stdout if proc.returncode == 0 and proc.stdout else text
