"""Running commands on the host, for stages that have no image."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from pipekit.backend import CommandResult, LineSink, LineSplitter

__all__ = ["HostShell"]


class HostShell:
    """Runs ``sh -c`` on this machine, one process group per command, killable from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[str, set[subprocess.Popen[bytes]]] = {}
        self._closed: set[str] = set()

    def run(
        self,
        key: str,
        command: str,
        *,
        cwd: Path,
        env: Mapping[str, str],
        on_line: LineSink,
    ) -> CommandResult:
        start = time.monotonic()
        full_env = {**os.environ, **env}
        with self._lock:
            if key in self._closed:
                return CommandResult(command, 137, "", "", 0.0)
            proc = subprocess.Popen(
                ["sh", "-c", command],
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self._procs.setdefault(key, set()).add(proc)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            splitters = {
                proc.stdout.fileno(): LineSplitter("stdout", on_line),
                proc.stderr.fileno(): LineSplitter("stderr", on_line),
            }
            with selectors.DefaultSelector() as sel:
                for f in (proc.stdout, proc.stderr):
                    sel.register(f, selectors.EVENT_READ)
                open_files = 2
                while open_files:
                    for sk, _ in sel.select():
                        data = os.read(sk.fd, 65536)
                        if not data:
                            sel.unregister(sk.fileobj)
                            open_files -= 1
                        else:
                            splitters[sk.fd].feed(data)
            code = proc.wait()
            out = splitters[proc.stdout.fileno()].close()
            err = splitters[proc.stderr.fileno()].close()
            proc.stdout.close()
            proc.stderr.close()
        finally:
            with self._lock:
                self._procs.get(key, set()).discard(proc)
        if code < 0:  # killed by a signal: report it the way a shell does
            code = 128 - code
        return CommandResult(command, code, out, err, time.monotonic() - start)

    def kill(self, key: str) -> None:
        """Kill every process group started under ``key`` (one prepared stage); later runs under
        it return at once."""
        with self._lock:
            self._closed.add(key)
            procs = list(self._procs.pop(key, ()))
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
