"""The host backend: stages that have no image run their commands on this machine."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import attrs

from pipekit._core.streams import LineSplitter
from pipekit._workspace.archive import pack, unpack
from pipekit.backend import (
    RUN_SCRIPT,
    SCRIPT_VAR,
    Capabilities,
    CommandResult,
    LineSink,
    StageHandle,
    StageSpec,
    shell_script,
)
from pipekit.exceptions import StageFailed

__all__ = ["HostBackend", "HostShell"]


class HostShell:
    """Runs ``sh -c`` on this machine, one process group per command, killable from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[str, set[subprocess.Popen[bytes]]] = {}
        #: every process group started under a key, also of commands that ended: what they left
        #: running in the background (`server &`) ends with the stage
        self._groups: dict[str, set[int]] = {}
        self._closed: set[str] = set()

    def run(
        self,
        key: str,
        command: str | list[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        on_line: LineSink,
    ) -> CommandResult:
        start = time.monotonic()
        shown = command if isinstance(command, str) else " ".join(command)
        full_env = {**os.environ, **env}
        with self._lock:
            if key in self._closed:
                return CommandResult(shown, 137, "", "", 0.0)
            proc = subprocess.Popen(
                ["sh", "-c", command] if isinstance(command, str) else command,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self._procs.setdefault(key, set()).add(proc)
            self._groups.setdefault(key, set()).add(proc.pid)
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
        return CommandResult(shown, code, out, err, time.monotonic() - start)

    def kill_prefix(self, prefix: str) -> None:
        """Kill the commands of every key that starts with ``prefix`` (a whole run)."""
        with self._lock:
            keys = [k for k in {*self._procs, *self._groups} if k.startswith(prefix)]
        for key in keys:
            self.kill(key)

    def kill(self, key: str) -> None:
        """Kill every process group started under ``key`` (one prepared stage); later runs under
        it return at once."""
        with self._lock:
            self._closed.add(key)
            self._procs.pop(key, None)
            groups = self._groups.pop(key, set())
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class HostBackend:
    """Runs a stage's commands with ``sh -c`` on this machine, in the pipeline's folder."""

    name = "host"
    capabilities = Capabilities(shares_workspace=True, runs_host_stages=True)

    def __init__(self) -> None:
        self._shell = HostShell()

    def check(self) -> None:
        return None

    def prepare(self, spec: StageSpec) -> StageHandle:
        if spec.services:
            raise StageFailed(
                f"Stage '{spec.stage}' has services but no image: services are reached by name from"
                " the stage's container, so give the stage an image",
                stage=spec.stage,
            )
        key = f"{spec.run_id}/{spec.stage}/{uuid.uuid4().hex[:8]}"
        workdir = spec.workspace / spec.workdir if spec.workdir else spec.workspace
        return StageHandle(spec=spec, ref=key, where="host", workdir=str(workdir), workspace_dir=str(spec.workspace))

    def exec(
        self, handle: StageHandle, command: str, env: Mapping[str, str], on_line: LineSink, *, strict: bool = True
    ) -> CommandResult:
        spec = handle.spec
        script = shell_script(command, strict)
        cwd = Path(handle.workdir or spec.workspace)
        full_env = {**spec.all_env, **env, SCRIPT_VAR: script}
        result = self._shell.run(str(handle.ref), RUN_SCRIPT, cwd=cwd, env=full_env, on_line=on_line)
        return attrs.evolve(result, command=command)

    def put_files(self, handle: StageHandle, archive: bytes, dest: str) -> None:
        unpack(archive, Path(dest))

    def get_files(self, handle: StageHandle, path: str) -> bytes | None:
        return pack(Path(path)) if os.path.lexists(path) else None

    def release(self, handle: StageHandle) -> None:
        self._shell.kill(str(handle.ref))

    def cleanup(self, run_id: str) -> None:
        self._shell.kill_prefix(f"{run_id}/")
