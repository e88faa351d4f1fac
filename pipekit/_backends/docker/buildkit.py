"""Image builds with BuildKit secrets, through the docker CLI (docker-py has no BuildKit support).

Secret values travel only in the environment of the ``docker build`` process
(``--secret id=NAME,env=VAR``): never on its command line, never as build args.
"""

from __future__ import annotations

import collections
import functools
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from pipekit._core.streams import LineSplitter
from pipekit.backend import BuildSpec, LineSink
from pipekit.exceptions import BuildFailed, BuildKitUnavailable

__all__ = ["BuildProgress", "buildkit_build", "find_buildkit_cli"]

CLI_ENV = "PIPEKIT_DOCKER_CLI"
_STEP = re.compile(r"^#\d+ \[(?:[^\]]*? )?\d+/\d+\] (.+)$")


class BuildProgress:
    """Follows a build's log as it streams: the instruction running now, and the last lines,
    so that a failure can name both (``BuildFailed``)."""

    def __init__(self, on_line: LineSink, step: re.Pattern[str]) -> None:
        self._on_line = on_line
        self._step = step
        self.instruction = "(before the first instruction)"
        self.tail: collections.deque[str] = collections.deque(maxlen=20)

    def __call__(self, stream: str, text: str) -> None:
        match = self._step.match(text)
        if match:
            self.instruction = match.group(1)
        self.tail.append(text)
        self._on_line(stream, text)

    def failed(self, stage: str, reason: str) -> BuildFailed:
        return BuildFailed(stage=stage, instruction=self.instruction, reason=reason, output_tail=list(self.tail))


def _candidates() -> list[str]:
    explicit = os.environ.get(CLI_ENV)
    if explicit:
        return [explicit]
    found = []
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        path = os.path.join(folder, "docker")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            found.append(os.path.realpath(path))
    return list(dict.fromkeys(found))


def _can_buildkit(cli: str) -> bool:
    try:
        out = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    match = re.search(r"version (\d+)\.", out)
    if match and int(match.group(1)) < 23:
        return True  # built-in BuildKit, switched on with DOCKER_BUILDKIT=1
    try:  # newer CLIs build with BuildKit through the buildx plugin only
        return subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=None)
def _find(candidates: tuple[str, ...]) -> str | None:
    for cli in candidates:
        if _can_buildkit(cli):
            return cli
    return None


def find_buildkit_cli() -> str:
    """A docker CLI that builds with BuildKit, or BuildKitUnavailable saying what to install."""
    candidates = tuple(_candidates())
    cli = _find(candidates)
    if cli is None:
        tried = ", ".join(candidates) or "no docker CLI on PATH"
        raise BuildKitUnavailable(
            "Image builds need BuildKit, and no docker CLI here can drive it (tried: "
            f"{tried}). Install the docker buildx plugin (or a docker CLI 20.10-22.x) and point"
            f" {CLI_ENV} at it, or set PIPEKIT_BUILDER=classic for the classic builder (no build"
            " secrets: pipekit does not fall back to build args, which would leak the secret)"
        )
    return cli


def buildkit_build(spec: BuildSpec, context: IO[bytes], on_line: LineSink, *, host: str | None = None) -> str:
    """Build with ``docker build`` and BuildKit from a context tar (sent on stdin); returns the
    image id. ``host``: the engine (``DOCKER_HOST``) to build on."""
    cli = find_buildkit_cli()
    progress = BuildProgress(on_line, _STEP)

    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    if host and host != "unix://":
        env["DOCKER_HOST"] = host
    with tempfile.TemporaryDirectory(prefix="pipekit-build-") as tmp:
        iidfile = Path(tmp) / "iid"
        args = [cli, "build", "--progress=plain", "--iidfile", str(iidfile)]
        args += ["-f", spec.dockerfile]
        if spec.tag:
            args += ["-t", spec.tag]
        for key, value in spec.build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        if spec.target:
            args += ["--target", spec.target]
        for key, value in spec.labels.items():
            args += ["--label", f"{key}={value}"]
        for i, (sid, value) in enumerate(sorted(spec.secrets.items())):
            var = f"PIPEKIT_BUILD_SECRET_{i}"
            env[var] = value
            args += ["--secret", f"id={sid},env={var}"]
        args.append("-")
        proc = subprocess.Popen(args, stdin=context, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        splitter = LineSplitter("stderr", progress)
        fd = proc.stdout.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            splitter.feed(chunk)
        splitter.close()
        proc.stdout.close()
        code = proc.wait()
        if code != 0:
            reason = next(
                (t for t in reversed(progress.tail) if t.startswith(("ERROR", "error:", "failed to solve"))),
                f"docker build exited with code {code}",
            )
            raise progress.failed(spec.stage, reason)
        return iidfile.read_text().strip()
