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
