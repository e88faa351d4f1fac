"""A command's output on its way out: split into lines in batches, and kept for its result with a
bounded amount in memory.

A backend feeds the bytes it reads to a :class:`LineSplitter` per stream. The splitter hands the
complete lines of each chunk to the sink at once (``sink.batch_lines(stream, lines)`` when the sink has
that method, else one ``sink(stream, line)`` call per line), so the log can write a chunk of lines in
one go; and it writes every byte to a :class:`Captured`, which keeps the first
:data:`MEMORY_LIMIT` bytes in memory and spills the rest to an unlinked temporary file.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

__all__ = ["Captured", "LineSplitter", "MAX_LINE", "MEMORY_LIMIT", "plain_shell_message"]

#: bytes of a command's stdout (and of its stderr) kept in memory; the rest goes to a temporary file
MEMORY_LIMIT = 1 << 20
#: a line longer than this (a program printing with no newline) reaches the log in pieces of this size
MAX_LINE = 1 << 20


class Captured:
    """Everything a stream printed: the first :data:`MEMORY_LIMIT` bytes in memory, the rest in a
    temporary file that is unlinked as soon as it is made (so it goes away with the result, also
    when the process is killed)."""

    def __init__(self) -> None:
        self._memory = bytearray()
        self._fd: int | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._fd is None and len(self._memory) + len(data) <= MEMORY_LIMIT:
            self._memory += data
            return
        if self._fd is None:
            fd, path = tempfile.mkstemp(prefix="pipekit-output-")
            os.unlink(path)
            self._fd = fd
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def text(self) -> str:
        """The whole text (read back each time: only a caller that asks pays the memory)."""
        data = bytes(self._memory)
        if self._fd is not None:
            parts, offset, left = [data], 0, self.size - len(self._memory)
            while left > 0:
                chunk = os.pread(self._fd, min(left, 1 << 24), offset)
                if not chunk:
                    break
                parts.append(chunk)
                offset += len(chunk)
                left -= len(chunk)
            data = b"".join(parts)
        return data.decode("utf-8", "replace")

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Captured):
            return self.text() == other.text()
        if isinstance(other, str):
            return self.text() == other
        return NotImplemented

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<output of {self.size} bytes>"


#: a shell's message about the script pipekit runs through ``eval`` (dash: ``sh: 3: eval: X``;
#: busybox and bash: ``sh: eval: line 3: X``): the user wrote no eval, and the line number counts
#: pipekit's own first lines
_EVAL = re.compile(r"^(?P<shell>[\w./-]*sh): (?:\d+: )?eval: (?:line \d+: )?(?P<rest>.+)$")
_NOT_FOUND = re.compile(r"^(?P<command>[^:]+): (?:command )?not found$")


def plain_shell_message(line: str) -> str:
    """A shell's error line without pipekit's mechanism in it: ``command not found: NAME``, or the
    shell's own message without ``eval`` and the line number."""
    match = _EVAL.match(line) if "eval: " in line else None
    if match is None:
        return line
    missing = _NOT_FOUND.match(match["rest"])
    return f"command not found: {missing['command']}" if missing else f"{match['shell']}: {match['rest']}"


def _safe_cut(data: bytes, at: int) -> int:
    """``at``, moved back so that it does not cut a UTF-8 character in two."""
    if at >= len(data):
        return len(data)
    cut = at
    while cut > at - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else at


class LineSplitter:
    """Turns chunks of bytes into complete lines (batches of them), keeping every byte in a
    :class:`Captured` for the command's result."""

    def __init__(self, stream: str, on_line: Callable[[str, str], None]) -> None:
        self.stream = stream
        self._on_line = on_line
        self._batch: Callable[[str, list[str]], Any] | None = getattr(on_line, "batch_lines", None)
        self._pending: list[bytes] = []
        self._size = 0
        self.captured = Captured()

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.captured.write(data)
        cut = data.rfind(b"\n")
        if cut < 0:
            self._pending.append(data)
            self._size += len(data)
            if self._size >= MAX_LINE:
                self._pieces()
            return
        if self._pending:
            data = b"".join([*self._pending, data])
            cut += self._size
            self._pending, self._size = [], 0
        if cut + 1 < len(data):
            self._pending, self._size = [data[cut + 1 :]], len(data) - cut - 1
        text = data[:cut].decode("utf-8", "replace")
        lines = text.split("\n")
        self._emit([line.rstrip("\r") for line in lines] if "\r" in text else lines)

    def _pieces(self) -> None:
        data = b"".join(self._pending)
        pieces = []
        while len(data) >= MAX_LINE:
            cut = _safe_cut(data, MAX_LINE)
            pieces.append(data[:cut].decode("utf-8", "replace"))
            data = data[cut:]
        self._pending, self._size = ([data] if data else []), len(data)
        self._emit(pieces)

    def _emit(self, lines: list[str]) -> None:
        if self.stream == "stderr":
            lines = [plain_shell_message(line) for line in lines]
        if self._batch is not None:
            self._batch(self.stream, lines)
            return
        for line in lines:
            self._on_line(self.stream, line)

    def close(self) -> Captured:
        """Deliver the last line (one with no newline at the end) and return the captured output."""
        if self._pending:
            self._emit([b"".join(self._pending).decode("utf-8", "replace").rstrip("\r")])
            self._pending, self._size = [], 0
        return self.captured
