"""A tokenizer and recursive-descent parser for the declarative Jenkinsfile subset.

The grammar is Groovy's command syntax as declarative pipelines use it::

    block     := '{' statement* '}'
    statement := NAME '=' value                      (environment { A = 'b' }, script: x = ...)
               | 'def' NAME '=' value
               | path '(' args ')' block?            (stage('Build') { ... }, sh(script: '...'))
               | path args? block?                   (agent any, sh 'make', junit 'x.xml', steps { ... })
    path      := NAME ('.' NAME)*
    args      := arg (',' arg)*
    arg       := (NAME | STRING) ':' value | value
    value     := STRING | NUMBER | true | false | null | list | map | path ('(' args ')')? block?
    list      := '[' (value (',' value)*)? ']'       map := '[' arg (',' arg)* ']' | '[:]'

A statement that does not fit (Groovy code in a ``script`` block: ``if``, operators, closures) is
kept as :class:`Raw` with its text and line; the converter turns those into comments. Every node
knows its line in the Jenkinsfile.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

__all__ = ["Call", "Assign", "GString", "Raw", "Ref", "parse", "tokenize", "ParseError"]


class ParseError(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@attrs.frozen
class Token:
    kind: str  # name, string, gstring, number, op, nl, eof
    text: str
    line: int
    start: int
    end: int
    value: Any = None


@attrs.frozen
class GString:
    """A double-quoted Groovy string: literal parts and ``${expression}`` parts, in order."""

    parts: tuple[tuple[str, str], ...]  # ("text", "...") or ("expr", "env.X")


@attrs.frozen
class Ref:
    """A name or dotted path used as a value (``any``, ``params.DEPLOY``, ``env.BRANCH_NAME``)."""

    path: str


@attrs.frozen
class Call:
    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    block: tuple[Any, ...] | None = None
    line: int = 0
    raw: str = ""

    def kw(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self.kwargs if k == key), default)

    def first(self, default: Any = None) -> Any:
        return self.args[0] if self.args else default


@attrs.frozen
class Assign:
    name: str
    value: Any
    line: int
    raw: str = ""


@attrs.frozen
class Raw:
    text: str
    line: int


_OPS = ("==", "!=", "&&", "||", "<=", ">=", "->", "?:", "?.", "*.", "=~", "==~", "<<", "++", "--")
_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\f]+|\\\n)
    |(?P<comment>//[^\n]*|/\*.*?\*/)
    |(?P<nl>\n)
    |(?P<tsq>'''.*?''')|(?P<tdq>\"\"\".*?(?<!\\)\"\"\")
    |(?P<sq>'(?:\\.|[^'\\\n])*')|(?P<dq>"(?:\\.|[^"\\\n])*")
    |(?P<number>\d+(?:\.\d+)?)
    |(?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
    |(?P<op>==~|==|!=|&&|\|\||<=|>=|->|\?:|\?\.|\*\.|=~|<<|\+\+|--|[{}()\[\],:=.;!<>+\-*/%?&|])""",
    re.S | re.X,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "$": "$", "\n": ""}


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), text, flags=re.S)


def _gstring(body: str) -> GString:
    """Split a double-quoted string into text and ``${...}``/``$name`` parts."""
    parts: list[tuple[str, str]] = []
    i, text = 0, []
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            text.append(_ESCAPES.get(body[i + 1], "\\" + body[i + 1]))
            i += 2
        elif c == "$" and body[i + 1 : i + 2] == "{":
            depth, j = 1, i + 2
            while j < len(body) and depth:
                depth += {"{": 1, "}": -1}.get(body[j], 0)
                j += 1
            parts += [("text", "".join(text))] if text else []
            parts.append(("expr", body[i + 2 : j - 1].strip()))
            text, i = [], j
        elif c == "$" and re.match(r"[A-Za-z_]", body[i + 1 : i + 2]):
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", body[i + 1 :])
            assert m is not None
            parts += [("text", "".join(text))] if text else []
            parts.append(("expr", m.group(0)))
            text, i = [], i + 1 + m.end()
        else:
            text.append(c)
            i += 1
    if text:
        parts.append(("text", "".join(text)))
    return GString(tuple(parts))


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    pos, line = 0, 1
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise ParseError(f"unexpected character {source[pos]!r}", line)
        kind, text = m.lastgroup or "", m.group(0)
        if kind == "nl":
            tokens.append(Token("nl", text, line, pos, m.end()))
        elif kind in ("sq", "tsq"):
            body = text[3:-3] if kind == "tsq" else text[1:-1]
            tokens.append(Token("string", text, line, pos, m.end(), _unescape(body)))
        elif kind in ("dq", "tdq"):
            body = text[3:-3] if kind == "tdq" else text[1:-1]
            value = _gstring(body)
            if all(kind == "text" for kind, _ in value.parts):  # nothing to interpolate: a plain string
                tokens.append(Token("string", text, line, pos, m.end(), "".join(v for _, v in value.parts)))
            else:
                tokens.append(Token("gstring", text, line, pos, m.end(), value))
        elif kind in ("number", "name", "op"):
            tokens.append(Token(kind, text, line, pos, m.end()))
        line += text.count("\n")
        pos = m.end()
    tokens.append(Token("eof", "", line, pos, pos))
    return tokens


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0

    # -- tokens ---------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, n: int = 1) -> Token:
        return self.tokens[min(self.i + n, len(self.tokens) - 1)]

    def take(self) -> Token:
        t = self.tok
        self.i += 1
        return t

    def is_op(self, text: str) -> bool:
        return self.tok.kind == "op" and self.tok.text == text

    def expect(self, text: str) -> Token:
        if not self.is_op(text):
            raise ParseError(f"expected '{text}', found '{self.tok.text or self.tok.kind}'", self.tok.line)
        return self.take()

    def skip_nl(self) -> None:
        while self.tok.kind == "nl" or self.is_op(";"):
            self.i += 1

    # -- blocks and statements --------------------------------------------------------------
    def block(self) -> tuple[Any, ...]:
        self.expect("{")
        out: list[Any] = []
        while True:
            self.skip_nl()
            if self.is_op("}"):
                self.take()
                return tuple(out)
            if self.tok.kind == "eof":
                raise ParseError("a block is not closed (missing '}')", self.tok.line)
            out.append(self.statement())

    def statement(self) -> Any:
        start = self.i
        try:
            node = self._statement()
            if self.tok.kind not in ("nl", "eof") and not self.is_op("}") and not self.is_op(";"):
                raise ParseError("more on the line than a statement", self.tok.line)
            return node
        except ParseError:
            self.i = start
            return self._raw()

    def _raw(self) -> Raw:
        """The rest of the statement as text (balanced braces, so a nested block goes with it)."""
        first = self.tok
        depth = 0
        while self.tok.kind != "eof":
            if self.tok.kind == "op" and self.tok.text in "{([":
                depth += 1
            elif self.tok.kind == "op" and self.tok.text in "})]":
                if depth == 0:
                    break
                depth -= 1
            elif self.tok.kind == "nl" and depth == 0:
                break
            self.take()
        end = self.tokens[self.i - 1].end if self.i > 0 else first.end
        return Raw(self.source[first.start : end].strip(), first.line)

    def _statement(self) -> Any:
        t = self.tok
        if t.kind == "name" and t.text == "def" and self.peek().kind == "name":
            self.take()
        if self.tok.kind == "name" and self.peek().kind == "op" and self.peek().text == "=":
            name = self.take().text
            self.take()
            value = self.value()
            return Assign(name, value, t.line, self.source[t.start : self.tokens[self.i - 1].end])
        if self.tok.kind != "name":
            raise ParseError(f"unexpected '{self.tok.text}'", self.tok.line)
        return self.call(t)

    def path(self) -> str:
        parts = [self.take().text]
        while self.is_op(".") and self.peek().kind == "name":
            self.take()
            parts.append(self.take().text)
        return ".".join(parts)

    def call(self, first: Token) -> Call:
        name = self.path()
        args: list[Any] = []
        kwargs: list[tuple[str, Any]] = []
        if self.is_op("(") and self.tok.start == self.tokens[self.i - 1].end:  # name(...) with no space
            self.take()
            self.skip_nl()
            if not self.is_op(")"):
                self.arguments(args, kwargs, closing=")")
            self.expect(")")
        elif self.tok.kind in ("string", "gstring", "number", "name") or self.is_op("["):
            self.arguments(args, kwargs, closing=None)
        block = self.block() if self.is_op("{") else None
        raw = self.source[first.start : self.tokens[self.i - 1].end]
        return Call(name, tuple(args), tuple(kwargs), block, first.line, raw)

    def arguments(self, args: list[Any], kwargs: list[tuple[str, Any]], closing: str | None) -> None:
        while True:
            if self.tok.kind in ("name", "string") and self.peek().kind == "op" and self.peek().text == ":":
                key = self.take()
                self.take()
                kwargs.append((key.value if key.kind == "string" else key.text, self.value()))
            else:
                args.append(self.value())
            if not self.is_op(","):
                return
            self.take()
            if closing is not None:
                self.skip_nl()

    def value(self) -> Any:
        t = self.tok
        if t.kind in ("string", "gstring"):
            self.take()
            return t.value
        if t.kind == "number":
            self.take()
            return float(t.text) if "." in t.text else int(t.text)
        if t.kind == "name" and t.text in ("true", "false", "null"):
            self.take()
            return {"true": True, "false": False, "null": None}[t.text]
        if self.is_op("["):
            return self.collection()
        if t.kind == "name":
            start = self.i
            name = self.path()
            if self.is_op("(") or self.is_op("{"):
                self.i = start
                return self.call(t)
            return Ref(name)
        raise ParseError(f"a value was expected, found '{t.text or t.kind}'", t.line)

    def collection(self) -> Any:
        self.expect("[")
        self.skip_nl()
        if self.is_op(":"):
            self.take()
            self.expect("]")
            return {}
        if self.is_op("]"):
            self.take()
            return []
        args: list[Any] = []
        kwargs: list[tuple[str, Any]] = []
        self.arguments(args, kwargs, closing="]")
        self.skip_nl()
        self.expect("]")
        if kwargs and not args:
            return dict(kwargs)
        if args and not kwargs:
            return list(args)
        raise ParseError("a list mixes values and key: value pairs", self.tok.line)


def parse(source: str) -> Call:
    """The ``pipeline { ... }`` of a declarative Jenkinsfile, as a :class:`Call` tree."""
    p = _Parser(source)
    while True:
        p.skip_nl()
        if p.tok.kind == "eof":
            raise ParseError("no `pipeline { ... }` block: only declarative Jenkinsfiles are converted", p.tok.line)
        if p.tok.kind == "name" and p.tok.text == "pipeline" and p.peek().kind == "op" and p.peek().text == "{":
            return p.call(p.tok)  # errors inside it are the file's errors, with their line
        p._raw()
