"""Helpers for the tests (imported by name; conftest.py holds the fixtures)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class StartedRun:
    """A `pipekit run --log-format json` in a subprocess, read up to the point a test needs."""

    def __init__(self, folder: Path, busybox_image: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipekit",
                "run",
                "-f",
                str(folder),
                "--log-format",
                "json",
                "--image-map",
                f"busybox={busybox_image}",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.run_id: str | None = None
        self.events: list[dict[str, Any]] = []

    def wait_for_lines(self, line: str, stages: int = 1, timeout: float = 60) -> set[str]:
        """Read events until ``stages`` stages have printed ``line``; returns those stages."""
        assert self.proc.stdout is not None
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        for text in self.proc.stdout:
            event = json.loads(text)
            self.events.append(event)
            self.run_id = event.get("run_id", self.run_id)
            if event["event"] == "output" and event.get("line") == line:
                seen.add(event["stage"])
            if len(seen) >= stages or time.monotonic() > deadline:
                break
        return seen

    def wait_for_events(self, name: str, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
        """Read events until ``count`` events named ``name`` came; returns them."""
        assert self.proc.stdout is not None
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        for text in self.proc.stdout:
            event = json.loads(text)
            self.events.append(event)
            self.run_id = event.get("run_id", self.run_id)
            if event["event"] == name:
                found.append(event)
            if len(found) >= count or time.monotonic() > deadline:
                break
        return found

    def finish(self, timeout: float = 60) -> tuple[list[dict[str, Any]], str]:
        """Wait for the end; the remaining events and stderr."""
        out, err = self.proc.communicate(timeout=timeout)
        rest = [json.loads(line) for line in out.splitlines() if line.strip()]
        self.events.extend(rest)
        return rest, err

    def label(self) -> dict[str, str]:
        return {"label": f"io.pipekit.run={self.run_id}"}


def exec_events(client: Any, since: float) -> list[dict[str, Any]]:
    """The ``exec_create`` events of an engine (a docker SDK client) from ``since`` until now."""
    time.sleep(0.3)  # events arrive a little after the fact
    events = client.events(since=since, until=time.time(), decode=True, filters={"type": "container"})
    return [e for e in events if str(e.get("Action", "")).startswith("exec_create")]


# -- the installed `pipekit` command, as users run it ----------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def console_script() -> str:
    """The `pipekit` console script pip installed next to this Python (not `python -m pipekit`)."""
    import shutil
    import sysconfig

    beside = Path(sysconfig.get_path("scripts")) / "pipekit"
    found = str(beside) if beside.is_file() else shutil.which("pipekit")
    assert found, "the pipekit console script is not installed: pip install -e '.[test]'"
    return found


def console_env(base: dict[str, str] | None = None, **more: str) -> dict[str, str]:
    """The environment of a console-script process (``base``, else this one's, and ``more``) with
    this checkout's package first on the path."""
    import os

    env = {**(os.environ if base is None else base), **more}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_console(
    args: list[str],
    *,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    **kw: Any,
) -> subprocess.CompletedProcess[str]:
    """Run `pipekit ARGS` (the installed console script) as a separate process, output captured.

    tests/test_console.py checks that every command of the CLI is run this way by some test: it
    reads the first argument of every ``run_console([...])`` and ``Terminal([...])`` call."""
    return subprocess.run(
        [console_script(), *args],
        cwd=cwd,
        env=console_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def console_popen(
    args: list[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.Popen[str]:
    """Start `pipekit ARGS` (the installed console script) as a separate process and return it
    (for long-running commands: `serve`, `logs --follow`)."""
    return subprocess.Popen([console_script(), *args], cwd=cwd, env=console_env(env), text=True, **kw)


class Terminal:
    """`pipekit ARGS` (the installed console script) on a pseudo-terminal of its own: its
    controlling terminal, so typed Ctrl-C is a SIGINT as on a real one. Type with :meth:`send`,
    read with :meth:`expect`."""

    def __init__(
        self, args: list[str], *, cwd: Path | str | None = None, env: dict[str, str] | None = None, cols: int = 100
    ) -> None:
        import fcntl
        import os
        import pty
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, cols, 0, 0))

        def take_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [console_script(), *args],
            cwd=cwd,
            env=console_env(env, TERM="xterm", COLUMNS=str(cols)),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,
        )
        os.close(slave)
        self.fd = master
        self.seen = b""

    def send(self, text: str) -> None:
        import os

        os.write(self.fd, text.encode())

    def read(self, timeout: float) -> bool | None:
        """Read what comes within ``timeout``: True when something came, None when nothing did,
        False when the terminal is closed (every process that held it is gone)."""
        import os
        import select

        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: every process holding the terminal is gone
            return False
        self.seen += data
        return bool(data)

    def expect(self, text: str, timeout: float = 60) -> str:
        """Read until ``text`` appears after what earlier calls consumed; the output up to it."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.read(min(left, 1.0)) is False and text.encode() not in self.seen:
                raise AssertionError(f"{text!r} did not appear on the terminal; it shows:\n{self.text()}")
        at = self.seen.index(text.encode()) + len(text)
        before, self.seen = self.seen[:at], self.seen[at:]
        return before.decode(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        """Read until the program ends; its exit code."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.2)
        while self.read(0.1) is True and time.monotonic() < deadline + 5:
            pass
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def text(self) -> str:
        return self.seen.decode(errors="replace")

    def close(self) -> None:
        import os

        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.fd)


def drop_workspace_bases(client: Any, under: Path) -> list[str]:
    """Remove the copies of workspaces under ``under`` that copy mode kept in the engine (with
    their companions): what a test's folders left for the next run, which will not come."""
    import os
    import socket

    from docker.errors import APIError

    prefix = f"{socket.gethostname()}:{os.path.realpath(under)}"
    listing = (client.api.volumes(filters={"label": "io.pipekit.workspace-base"}) or {}).get("Volumes") or []
    mine = [
        v["Name"]
        for v in listing
        if (v.get("Labels") or {}).get("io.pipekit.workspace-base.path", "").startswith(prefix)
    ]
    # a companion first (never complete-but-gone), then the volume that mounts an image, then the base
    order = [n for n in mine if n.endswith("-ok")] + [f"{n}-fs" for n in mine if not n.endswith("-ok")]
    for name in order + [n for n in mine if not n.endswith("-ok")]:
        try:
            client.api.remove_volume(name)
        except APIError:
            pass  # gone, or in use by a kept container of a test: it goes with that test's cleanup
    return mine
