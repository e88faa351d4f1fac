"""The tokenizer for Jenkinsfiles: Groovy's tokens as declarative pipelines use them.

It reads what Jenkins reads: a shebang first line, ``//`` and ``/* */`` comments anywhere, every
string form (``'...'``, ``"..."``, ``'''...'''``, ``\"\"\"...\"\"\"``, slashy ``/.../`` and
dollar-slashy ``$/.../$``, the double-quoted ones and the slashy ones with ``${...}`` and ``$name``
interpolation), the regex operators ``==~`` and ``=~``, annotations (``@Library(...) _``), and
any other character as a one-character operator, so that no text makes the tokenizer fail: a
statement the parser does not know is kept whole as text.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

__all__ = ["GString", "Token", "tokenize"]


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
    """An interpolated Groovy string: literal parts and ``${expression}`` parts, in order."""

    parts: tuple[tuple[str, str], ...]  # ("text", "...") or ("expr", "env.X")


_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\f\v\ufeff]+|\\\r?\n)
    |(?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<nl>\n)
    |(?P<tsq>'''.*?(?<!\\)''')|(?P<tdq>\"\"\".*?(?<!\\)\"\"\")
    |(?P<sq>'(?:\\.|[^'\\\n])*')|(?P<dq>"(?:\\.|[^"\\\n])*")
    |(?P<dslashy>\$/.*?/\$)
    |(?P<number>\d+(?:\.\d+)?[GgLlDdFf]?)
    |(?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
    |(?P<op>==~|===|!==|==|!=|&&|\|\||<=>|<=|>=|->|\?:|\?\.|\*\.|=~|<<|>>|\+\+|--|\+=|-=|\*\*|\.\.|.)""",
    re.S | re.X,
)
_SLASHY = re.compile(r"/(?![/*])(?:\\/|\\(?!/)|[^/\\])+/", re.S)
#: after these tokens a ``/`` starts a slashy string, not a division
_BEFORE_SLASHY = {"(", ",", "=", "==~", "=~", "==", "!=", "[", ":", "{", "!", "&&", "||", "?", "~", "+", "return", ";"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "\\": "\\", "'": "'", '"': '"', "$": "$", "\n": ""}


def _unescape(text: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", _escape, text, flags=re.S)


def _escape(m: re.Match[str]) -> str:
    code = m.group(1)
    if len(code) == 5:
        return chr(int(code[1:], 16))
    return _ESCAPES.get(code, "\\" + code)


def _expression_end(body: str, i: int) -> int:
    """The index after the ``}`` that closes the ``${`` at ``i`` (quotes inside are skipped)."""
    depth, j, quote = 1, i + 2, ""
    while j < len(body) and depth:
        c = body[j]
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        else:
            depth += {"{": 1, "}": -1}.get(c, 0)
        j += 1
    return j


def gstring(body: str, escapes: bool = True) -> GString | str:
    """Split an interpolated string into text and ``${...}``/``$name`` parts (a plain str when it
    has none). ``escapes``: backslash escapes as in double quotes (slashy strings keep them)."""
    parts: list[tuple[str, str]] = []
    i, text = 0, []
    while i < len(body):
        c = body[i]
        if c == "\\" and escapes and i + 1 < len(body):
            m = re.match(r"\\(u[0-9a-fA-F]{4}|.)", body[i:], re.S)
            assert m is not None
            text.append(_escape(m))
            i += m.end()
        elif c == "$" and body[i + 1 : i + 2] == "{":
            j = _expression_end(body, i)
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
    if all(kind == "text" for kind, _ in parts):
        return "".join(v for _, v in parts)
    return GString(tuple(parts))


def _string_value(kind: str, text: str) -> Any:
    if kind in ("sq", "tsq"):
        return _unescape(text[3:-3] if kind == "tsq" else text[1:-1])
    if kind in ("dq", "tdq"):
        return gstring(text[3:-3] if kind == "tdq" else text[1:-1])
    if kind == "dslashy":
        body = text[2:-2].replace("$$", "\x00").replace("$/", "/").replace("\x00", "$")
        return gstring(body, escapes=False)
    return gstring(text[1:-1].replace("\\/", "/"), escapes=False)  # slashy


def _slashy_allowed(tokens: list[Token]) -> bool:
    last = next((t for t in reversed(tokens) if t.kind != "nl"), None)
    return last is None or (last.kind in ("op", "name") and last.text in _BEFORE_SLASHY)


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    pos, line = 0, 1
    if source.startswith("#!"):  # a shebang line: Groovy skips it
        pos = source.find("\n") if "\n" in source else len(source)
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        assert m is not None  # the last alternative matches any character
        kind, text = m.lastgroup or "", m.group(0)
        if text == "/" and _slashy_allowed(tokens):
            slashy = _SLASHY.match(source, pos)
            if slashy is not None:
                kind, text = "slashy", slashy.group(0)
        end = pos + len(text)
        if kind in ("sq", "tsq", "dq", "tdq", "dslashy", "slashy"):
            value = _string_value(kind, text)
            tokens.append(Token("gstring" if isinstance(value, GString) else "string", text, line, pos, end, value))
        elif kind in ("nl", "number", "name", "op"):
            tokens.append(Token(kind, text, line, pos, end))
        line += text.count("\n")
        pos = end
    tokens.append(Token("eof", "", line, pos, pos))
    return tokens
