"""A recursive-descent parser for the declarative Jenkinsfile subset (tokens: ``_ci.jenkins.lex``).

The grammar is Groovy's command syntax as declarative pipelines use it::

    block     := '{' statement* '}'
    statement := NAME '=' value                      (environment { A = 'b' }, script: x = ...)
               | 'def' NAME '=' value
               | path '(' args ')' block?            (stage('Build') { ... }, stage ('x') { ... }, sh(script: '...'))
               | path args? block?                   (agent any, sh 'make', junit 'x.xml', steps { ... })
    path      := NAME ('.' NAME)*
    args      := arg (',' arg)*                      (a newline may follow each comma)
    arg       := (NAME | STRING) ':' value | value
    value     := term ('+' term)*
    term      := STRING | NUMBER | true | false | null | list | map | path ('(' args ')')? block?
    list      := '[' (value (',' value)*)? ']'       map := '[' arg (',' arg)* ']' | '[:]'

A block may open on the line after its statement (``stage('x')`` then ``{``). A statement that
does not fit (Groovy code in a ``script`` block: ``if``/``else``, loops, method chains, closures)
is kept as :class:`Raw` with its whole text, however many lines it spans, and its line; the
converter turns those into comments. Everything outside ``pipeline { }`` (``@Library``, imports,
functions) is kept the same way. Every node knows its line in the Jenkinsfile.
"""

from __future__ import annotations

from typing import Any

import attrs

from pipekit._ci.jenkins.lex import GString, Token, tokenize

__all__ = [
    "Assign",
    "Call",
    "Chain",
    "Concat",
    "GString",
    "Jenkinsfile",
    "ParseError",
    "Raw",
    "Ref",
    "parse",
    "parse_file",
]


class ParseError(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@attrs.frozen
class Ref:
    """A name or dotted path used as a value (``any``, ``params.DEPLOY``, ``env.BRANCH_NAME``)."""

    path: str


@attrs.frozen
class Concat:
    """``a + b + ...``: strings and names joined."""

    parts: tuple[Any, ...]


@attrs.frozen
class Chain:
    """``call(...).trim()``: a call and the methods without arguments called on its result."""

    call: Call
    methods: tuple[str, ...]


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


@attrs.frozen
class Jenkinsfile:
    pipeline: Call
    outside: tuple[Raw, ...]  # the statements before and after ``pipeline { }``


#: statements that are Groovy code, never steps
_GROOVY_KEYWORDS = {"if", "else", "for", "while", "switch", "try", "catch", "finally", "return", "throw", "do", "new"}
#: a statement goes on over the newline after one of these
_CONTINUES_AFTER = {"+", "-", "*", "/", "&&", "||", ",", "=", "(", "[", ".", "?", ":", "==", "!=", "<", ">", "->", "?."}
#: ... or before one of these
_CONTINUES_BEFORE = {".", "?.", "&&", "||", "?", ":", "+", "*.", "else", "catch", "finally"}


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

    def text(self, first: Token, last: Token) -> str:
        """The source from ``first`` to ``last``, its first line indented as in the file."""
        line_start = self.source.rfind("\n", 0, first.start) + 1
        indent = self.source[line_start : first.start]
        return (indent if not indent.strip() else "") + self.source[first.start : last.end]

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
            if self.tok.kind == "nl" and self._continues():
                raise ParseError("the statement goes on", self.tok.line)
            return node
        except ParseError:
            self.i = start
            return self.raw()

    def _continues(self) -> bool:
        """Whether the statement goes on after the newline at the current token."""
        before = self.tokens[self.i - 1] if self.i else None
        if before is not None and before.kind == "op" and before.text in _CONTINUES_AFTER:
            return True
        j = self.i
        while self.tokens[j].kind == "nl":
            j += 1
        after = self.tokens[j]
        return after.kind in ("op", "name") and after.text in _CONTINUES_BEFORE

    def raw(self) -> Raw:
        """The whole statement as text: balanced brackets, and the lines it goes on over."""
        first = self.tok
        depth = 0
        while self.tok.kind != "eof":
            if self.tok.kind == "op" and self.tok.text in "{([":
                depth += 1
            elif self.tok.kind == "op" and self.tok.text in "})]":
                if depth == 0:
                    break
                depth -= 1
            elif (self.tok.kind == "nl" or self.is_op(";")) and depth == 0 and not self._continues():
                break
            self.take()
        if self.i == 0 or self.tokens[self.i - 1].start < first.start:  # nothing taken: one token
            self.take()
        return Raw(self.text(first, self.tokens[self.i - 1]), first.line)

    def _statement(self) -> Any:
        t = self.tok
        if t.kind == "name" and t.text == "def" and self.peek().kind == "name":
            self.take()
        if self.tok.kind == "name":
            start = self.i
            name = self.path()
            if self.is_op("="):
                self.take()
                value = self.command() if self._command_call() else self.value()
                return Assign(name, value, t.line, self.text(t, self.tokens[self.i - 1]))
            self.i = start
        if self.tok.kind != "name" or t.text == "def" or t.text in _GROOVY_KEYWORDS:
            raise ParseError(f"unexpected '{self.tok.text}'", self.tok.line)
        return self.call(t)

    def _command_call(self) -> bool:
        """Whether a call without parentheses starts here (``docker.build name + ":tag"``)."""
        j = self.i
        if self.tokens[j].kind != "name" or self.tokens[j].text in ("true", "false", "null", "new"):
            return False
        j += 1
        while self.tokens[j].kind == "op" and self.tokens[j].text == "." and self.tokens[j + 1].kind == "name":
            j += 2
        return self.tokens[j].kind in ("string", "gstring", "name", "number")

    def command(self) -> Call:
        return self.call(self.tok)

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
        if self.is_op("("):  # name(...) or name (...)
            self.take()
            self.skip_nl()
            if not self.is_op(")"):
                self.arguments(args, kwargs, closing=")")
            self.skip_nl()
            self.expect(")")
        elif self.tok.kind in ("string", "gstring", "number", "name") or self.is_op("["):
            self.arguments(args, kwargs, closing=None)
        if self.tok.kind == "nl":  # a block that opens on the next line
            j = self.i
            while self.tokens[j].kind == "nl":
                j += 1
            if self.tokens[j].kind == "op" and self.tokens[j].text == "{":
                self.i = j
        block = self.block() if self.is_op("{") else None
        return Call(name, tuple(args), tuple(kwargs), block, first.line, self.text(first, self.tokens[self.i - 1]))

    def arguments(self, args: list[Any], kwargs: list[tuple[str, Any]], closing: str | None) -> None:
        while True:
            if self.tok.kind in ("name", "string") and self.peek().kind == "op" and self.peek().text == ":":
                key = self.take()
                self.take()
                self.skip_nl()
                kwargs.append((key.value if key.kind == "string" else key.text, self.value()))
            else:
                args.append(self.value())
            if closing is not None:
                self.skip_nl()
            if not self.is_op(","):
                return
            self.take()
            self.skip_nl()
            if closing is not None and self.is_op(closing):  # a trailing comma
                return

    def value(self) -> Any:
        first = self.term()
        if not self.is_op("+"):
            return first
        parts = [first]
        while self.is_op("+"):
            self.take()
            self.skip_nl()
            parts.append(self.term())
        return Concat(tuple(parts))

    def term(self) -> Any:
        t = self.tok
        if t.kind in ("string", "gstring"):
            self.take()
            return t.value
        if t.kind == "number":
            self.take()
            number = t.text.rstrip("GgLlDdFf")
            return float(number) if "." in number else int(number)
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
                made = self.call(t)
                methods: list[str] = []
                while self.is_op(".") and self.peek().kind == "name" and self.peek(2).text == "(":
                    if self.peek(3).text != ")":
                        raise ParseError("a method call with arguments", t.line)
                    methods.append(self.peek().text)
                    self.i += 4
                return Chain(made, tuple(methods)) if methods else made
            return Ref(name)
        raise ParseError(f"a value was expected, found '{t.text or t.kind}'", t.line)

    def collection(self) -> Any:
        self.expect("[")
        self.skip_nl()
        if self.is_op(":"):
            self.take()
            self.skip_nl()
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


def _is_pipeline(p: _Parser) -> bool:
    if not (p.tok.kind == "name" and p.tok.text == "pipeline"):
        return False
    j = p.i + 1
    while p.tokens[j].kind == "nl":
        j += 1
    return p.tokens[j].kind == "op" and p.tokens[j].text == "{"


def parse_file(source: str) -> Jenkinsfile:
    """A declarative Jenkinsfile: its ``pipeline { ... }`` as a :class:`Call` tree, and the
    statements outside it as :class:`Raw`."""
    p = _Parser(source)
    outside: list[Raw] = []
    pipeline: Call | None = None
    while True:
        p.skip_nl()
        if p.tok.kind == "eof":
            break
        if pipeline is None and _is_pipeline(p):
            pipeline = p.call(p.tok)  # errors inside it are the file's errors, with their line
        elif p.is_op("}") or p.is_op(")") or p.is_op("]"):
            outside.append(Raw(p.take().text, p.tokens[p.i - 1].line))
        else:
            outside.append(p.raw())
    if pipeline is None:
        raise ParseError("no `pipeline { ... }` block: only declarative Jenkinsfiles are converted", p.tok.line)
    return Jenkinsfile(pipeline, tuple(outside))


def parse(source: str) -> Call:
    """The ``pipeline { ... }`` of a declarative Jenkinsfile, as a :class:`Call` tree."""
    return parse_file(source).pipeline
