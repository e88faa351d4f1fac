"""A second Docker engine that cannot see this machine's folders, reached over TCP: how a remote
engine (``DOCKER_HOST=tcp://build-box:2375`` or ``ssh://``) behaves.

It runs in a mount namespace of its own with empty tmpfs mounts over ``/tmp`` (where the tests'
pipelines live) and over the repository, so a bind mount of a pipeline's folder gives its
containers an empty folder: the workspace has to travel. It has a bridge of its own (never
``--bridge none`` in the host's network namespace, which would delete docker0) and listens on
127.0.0.1 only.

Each engine has a name of its own (its role and its process's id, see tests/labs.py): folders
(``/var/lib/pipekit-test-engines/NAME``, ``/run/pipekit-test-engines/NAME``), a bridge and a free
subnet of 10.213.100-199.0/24 of its own, so that the two pytest-xdist workers, or a benchmark
beside a test session, never stop each other's engine. ``start()`` first removes the engines whose
process is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from labs import claim, instance_name, machine_lock, stale

ROOT = Path(__file__).parent.parent
STATES = Path("/var/lib/pipekit-test-engines")
RUNS = Path("/run/pipekit-test-engines")
SUBNETS = range(100, 200)  # 10.213.X.0/24, one per engine running on this machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_subnet() -> int:
    """An X of 10.213.X.0/24 that no address of this machine is in (under the machine lock)."""
    used = _sh("ip", "-4", "-o", "addr", "show").stdout
    for x in SUBNETS:
        if f" 10.213.{x}." not in used:
            return x
    raise RuntimeError("no free 10.213.X.0/24 subnet for a test engine")


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=120)


class RemoteEngine:
    """Start with :meth:`start`, load images with :meth:`load`, end with :meth:`stop`."""

    def __init__(self, name: str = "remote", instance: str | None = None) -> None:
        self.instance = instance or f"{name}-{instance_name()}"
        self.state = STATES / self.instance
        self.exec_root = RUNS / self.instance
        role, _, pid = self.instance.rpartition("-")
        self.bridge = f"pkt{role[:5]}{pid}"[:15]
        self.port = _free_port()
        self.host = f"tcp://127.0.0.1:{self.port}"
        self.pidfile = self.exec_root / "dockerd.pid"
        self.log = self.state / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("docker", "-H", self.host, *args, check=check)

    def start(self) -> None:
        with machine_lock("labs"):
            for instance in stale(RUNS):
                RemoteEngine(instance=instance)._stop_leftover()
            self._stop_leftover()
            claim(self.exec_root)
            (self.state / "data").mkdir(parents=True)
            _sh("ip", "link", "add", self.bridge, "type", "bridge")
            _sh("ip", "addr", "add", f"10.213.{_free_subnet()}.1/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        dockerd = (
            f"mount -t tmpfs none {ROOT} && mount -t tmpfs none /tmp && exec dockerd"
            f" --data-root {self.state / 'data'} --exec-root {self.exec_root / 'exec'} --pidfile {self.pidfile}"
            f" -H unix://{self.exec_root / 'docker.sock'} -H {self.host} --tls=false"
            f" --bridge {self.bridge} --iptables=false --ip-masq=false"
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", dockerd],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the remote test engine did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def load(self, image: str, as_name: str | None = None) -> None:
        """Copy an image from the main engine into this one (images are per engine)."""
        with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save:
            subprocess.run(
                ["docker", "-H", self.host, "load", "-q"], stdin=save.stdout, check=True, capture_output=True
            )
            if save.wait(timeout=300) != 0:
                raise RuntimeError(f"docker save {image} failed (exit {save.returncode})")
        if as_name:
            self.docker("tag", image, as_name)

    def sees(self, folder: Path, image: str) -> bool:
        """Whether a bind mount of ``folder`` shows its files in this engine's containers."""
        probe = self.docker("run", "--rm", "-v", f"{folder}:/probe", image, "ls", "/probe", check=False)
        return bool(probe.stdout.strip())

    def terminate(self) -> None:
        """Stop the engine the way an operator would (SIGTERM), while its clients are still busy."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        ids = self.docker("ps", "-aq", check=False).stdout.split() if self.proc and self.proc.poll() is None else []
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._cleanup_files()

    def _stop_leftover(self) -> None:
        """A killed test session can leave its engine running, its bridge and its folders: remove them."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        try:
            if pid:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        _sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)
