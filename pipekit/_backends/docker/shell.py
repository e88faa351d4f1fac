"""A stage container's own shell, fed its commands on an attached stdin: no ``exec`` per command.

A stage's container runs ``sh`` with an open stdin as its main process. An ``exec`` costs three
API calls and a ``runc exec`` (about 0.07 s here, more when the engine is busy); writing a command
to that shell costs nothing on the engine. So the Docker backend attaches to the container before
it starts and runs each ``ctx.sh`` as a child of that shell::

    exec 3>&2 2>/dev/null        (once: the shell's own messages, such as "Killed", go nowhere)
    (cd WORKDIR && export PIPEKIT_SCRIPT='...' NAME='value' && exec sh -c RUN_SCRIPT 3>&-) </dev/null 2>&3
    printf '\\036MARK %d\\n' "$?"; printf '\\036MARK\\n' >&3

The child runs exactly what an ``exec`` would (the same :data:`~pipekit.backend.RUN_SCRIPT`, its
own process, stdin empty, the secrets only in its environment). The engine delivers stdout and
stderr in separate frames, each in order, so the command is over when the mark has come on both.
The mark is random per container, so a command cannot print it by chance.

The shell runs one command at a time: a second command that comes while one runs (threads in a
stage) goes through ``exec``, as do commands whose environment has a name the shell cannot export.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from pipekit._backends.docker.sockets import close_stream
from pipekit._core.streams import Captured, LineSplitter
from pipekit.backend import RUN_SCRIPT, SCRIPT_VAR, LineSink

__all__ = ["AttachedShell"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STDOUT, _STDERR = 1, 2


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _held(buf: bytes, mark: bytes) -> int:
    """How many bytes at the end of ``buf`` could be the start of ``mark`` (kept until more comes)."""
    at = buf.rfind(mark[:1], max(0, len(buf) - len(mark) + 1))
    return len(buf) - at if at >= 0 and mark.startswith(buf[at:]) else 0


class AttachedShell:
    """The attached stdin and output of one container's main ``sh`` (made before the container
    starts, so that no output is missed)."""

    def __init__(self, api: Any, container: str) -> None:
        self._sock = api.attach_socket(container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self._mark = b"\x1e" + secrets.token_hex(8).encode()
        self._left = {_STDOUT: b"", _STDERR: b""}
        self._frames: Iterator[tuple[int, bytes]] | None = None
        self._lock = threading.Lock()
        self._begun = False
        self.alive = True  # False once the stream ended (the container stopped or was removed)
        self.released = False  # the backend is removing the container

    def takes(self, env: Mapping[str, str]) -> bool:
        """Take the shell for one command, if it is free and can export ``env``; then :meth:`run`
        must follow."""
        if not self.alive or not all(_NAME.match(name) for name in env):
            return False
        return self._lock.acquire(blocking=False)

    def run(
        self, script: str, env: Mapping[str, str], workdir: str | None, on_line: LineSink
    ) -> tuple[int | None, Captured, Captured]:
        """Run ``script`` (taken with :meth:`takes`); the exit code is None when the container went
        away before the command ended."""
        try:
            out, err = LineSplitter("stdout", on_line), LineSplitter("stderr", on_line)
            self._send(self._command(script, env, workdir))
            code = self._read(out, err)
            return code, out.close(), err.close()
        finally:
            self._lock.release()

    def _command(self, script: str, env: Mapping[str, str], workdir: str | None) -> bytes:
        exports = " ".join(f"{name}={_quote(value)}" for name, value in {**env, SCRIPT_VAR: script}.items())
        cd = f"cd {_quote(workdir)} && " if workdir else ""
        mark = "\\036" + self._mark[1:].decode()
        first = "" if self._begun else "exec 3>&2 2>/dev/null\n"
        self._begun = True
        return (
            f"{first}({cd}export {exports} && exec {' '.join(map(_quote, RUN_SCRIPT))} 3>&-) </dev/null 2>&3;"
            f" printf '{mark} %d\\n' \"$?\"; printf '{mark}\\n' >&3\n"
        ).encode()

    def _send(self, data: bytes) -> None:
        sock = getattr(self._sock, "_sock", self._sock)  # a plain socket under docker-py's SocketIO
        sock.sendall(data)

    def _read(self, out: LineSplitter, err: LineSplitter) -> int | None:
        from docker.utils.socket import frames_iter

        if self._frames is None:  # one generator for the container's life: a frame may span two commands
            self._frames = frames_iter(self._sock, tty=False)
        splitters = {_STDOUT: out, _STDERR: err}
        ends: dict[int, bytes] = {}
        for stream, data in self._frames:
            stream = _STDERR if stream == _STDERR else _STDOUT
            if stream in ends:  # printed after its mark (a background process): the next command's
                self._left[stream] += data
                continue
            end = self._take(stream, data, splitters[stream])
            if end is not None:
                ends[stream] = end
                if len(ends) == 2:
                    return int(ends[_STDOUT])
        self.alive = False  # the stream ended: the container stopped or was removed
        return None

    def _take(self, stream: int, data: bytes, splitter: LineSplitter) -> bytes | None:
        """Pass ``data`` on up to the mark; what comes after the mark's number on that stream (when
        the mark's line is complete), else None."""
        buf = self._left[stream] + data if self._left[stream] else data
        at = buf.find(self._mark)
        if at < 0:
            keep = _held(buf, self._mark)
            splitter.feed(buf[: len(buf) - keep])
            self._left[stream] = buf[len(buf) - keep :]
            return None
        splitter.feed(buf[:at])
        line_end = buf.find(b"\n", at)
        if line_end < 0:
            self._left[stream] = buf[at:]
            return None
        self._left[stream] = buf[line_end + 1 :]
        return buf[at + len(self._mark) : line_end].strip()

    def close(self) -> None:
        self.alive = False
        try:
            close_stream(self._sock)
        except OSError:
            pass
