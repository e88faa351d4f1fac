"""A three-node Docker Swarm on one machine, for the Swarm backend's tests and benchmark.

Each node is a ``dockerd`` of its own (own data root, exec root, socket, hostname and cgroup
parent) in a network namespace of its own; the namespaces are linked by a bridge that lives in a
further namespace (on the host, the main engine's ``iptables -P FORWARD DROP`` would drop their
traffic). Each engine also has empty tmpfs mounts over ``/tmp`` and the repository, so no node can
bind-mount a test's folder: the workspace really travels. A registry with a login runs in the
manager's namespace on the nodes' network, and every node treats that network's registries as
plain HTTP ones.

Every lab has a name of its own (by default from its process's id, see tests/labs.py): its folders
(``/var/lib/pipekit-swarms/NAME``, ``/run/pipekit-swarms/NAME``), namespaces (``pksw-NAME-*``) and
links are its own, so two processes (the two pytest-xdist workers, a benchmark beside a test
session) can each have a lab at the same time. The nodes' addresses are the same in every lab: they
live in the lab's own namespaces. ``up()`` first removes the labs whose process is gone.

pipekit reaches each node's engine through its unix socket, which each node carries as the label
``io.pipekit.engine``. Run ``python tests/swarm_lab.py up|down`` to try the backend by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labs import claim, instance_name, machine_lock, stale

ROOT = Path(__file__).parent.parent
NET = "10.213.90"
STATES = Path("/var/lib/pipekit-swarms")
RUNS = Path("/run/pipekit-swarms")
NODES = ("manager", "worker1", "worker2")
REGISTRY_PORT = 5000
REGISTRY_USER, REGISTRY_PASSWORD = "swarm-pusher", "swarm-Pa55word-for-tests"


def sh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


class Node:
    def __init__(self, lab: str, name: str, index: int) -> None:
        self.name = name
        self.ip = f"{NET}.{index + 1}"
        self.netns = f"pksw-{lab}-{name}"
        self.link = f"pksw{lab}{name[0]}{name[-1]}"  # its end in the bridge's namespace (<= 15 characters)
        self.state = STATES / lab / name
        self.run = RUNS / lab / name
        self.socket = self.run / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.pidfile = self.run / "dockerd.pid"
        self.log = self.state / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return sh("docker", "-H", self.host, *args, check=check, timeout=timeout)

    def start(self) -> None:
        (self.state / "data").mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        (self.run / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)
        inner = (
            f"hostname pk-{self.name} && mount -t tmpfs none {ROOT} && mount -t tmpfs none /tmp && exec dockerd"
            f" --data-root {self.state / 'data'} --exec-root {self.run / 'exec'} --pidfile {self.pidfile}"
            f" -H {self.host} --bridge none --iptables=false --ip-masq=false"
            f" --cgroup-parent /pk-{self.name} --insecure-registry {NET}.0/24"
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/var/run/netns/{self.netns}",
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    inner,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"engine {self.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        """Stop the engine abruptly, as a machine that loses power (its containers keep running
        until :meth:`start` brings the engine back, which then stops them)."""
        pid = self._pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            self.reap()
        _kill_containerd(self.run / "exec")

    def stop(self) -> None:
        if self._pid() and self.docker("info", check=False).returncode == 0:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        pid = self._pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                if not _alive(pid) or (self.proc is not None and self.proc.poll() is not None):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        _kill_containerd(self.run / "exec")
        self.reap()

    def reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_containerd(exec_root: Path) -> None:
    pidfile = exec_root / "containerd" / "containerd.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


class SwarmLab:
    """``up()`` starts the nodes and forms the swarm; ``down()`` removes every trace."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"s{instance_name()}"
        self.state, self.run = STATES / self.name, RUNS / self.name
        self.bridge_ns = f"pksw-{self.name}-br"
        self.nodes = [Node(self.name, node, i) for i, node in enumerate(NODES)]
        self.manager = self.nodes[0]
        self.registry = f"{self.manager.ip}:{REGISTRY_PORT}"
        self.registry_user, self.registry_password = REGISTRY_USER, REGISTRY_PASSWORD
        self._registry_proc: subprocess.Popen[bytes] | None = None
        self._loaded: set[str] = set()

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.manager.host, "PIPEKIT_BACKEND": "swarm"}

    def up(self, by_hand: bool = False) -> None:
        with machine_lock("labs"):
            for name in stale(RUNS):
                SwarmLab(name).down()
            self.down()
            claim(self.run, by_hand)
        self._network()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(Node.start, self.nodes))
        m = self.manager
        m.docker("swarm", "init", "--advertise-addr", m.ip, "--listen-addr", f"{m.ip}:2377")
        token = m.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for n in self.nodes[1:]:
            n.docker("swarm", "join", "--token", token, "--advertise-addr", n.ip, f"{m.ip}:2377")
        for n in self.nodes:
            node_id = n.docker("info", "-f", "{{.Swarm.NodeID}}").stdout.strip()
            m.docker(
                "node", "update", "--label-add", f"io.pipekit.engine={n.host}", "--label-add", f"lab={n.name}", node_id
            )
        self._start_registry()

    def _network(self) -> None:
        br = self.bridge_ns
        sh("ip", "netns", "add", br)
        sh("ip", "netns", "exec", br, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", br, "ip", "link", "set", "br0", "up")
        sh("ip", "netns", "exec", br, "ip", "link", "set", "lo", "up")
        for n in self.nodes:
            sh("ip", "netns", "add", n.netns)
            sh("ip", "link", "add", n.link, "type", "veth", "peer", "name", "eth0", "netns", n.netns)
            sh("ip", "link", "set", n.link, "netns", br)
            sh("ip", "netns", "exec", br, "ip", "link", "set", n.link, "master", "br0", "up")
            sh("ip", "netns", "exec", n.netns, "ip", "addr", "add", f"{n.ip}/24", "dev", "eth0")
            sh("ip", "netns", "exec", n.netns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", n.netns, "ip", "link", "set", "lo", "up")

    def _start_registry(self) -> None:
        import bcrypt

        folder = self.state / "registry"
        folder.mkdir(parents=True, exist_ok=True)
        hashed = bcrypt.hashpw(REGISTRY_PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
        (folder / "htpasswd").write_text(f"{REGISTRY_USER}:{hashed}\n")
        (folder / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
            f"http:\n  addr: {self.registry}\n"
            f"auth:\n  htpasswd:\n    realm: pipekit-swarm\n    path: {folder / 'htpasswd'}\n"
        )
        binary = shutil.which("docker-registry") or "docker-registry"
        with open(folder / "registry.log", "ab") as log:
            self._registry_proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.manager.netns}", binary, "serve", str(folder / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.run / "registry.pid").write_text(str(self._registry_proc.pid))
        deadline = time.monotonic() + 20
        while True:
            connect = f"import socket; socket.create_connection(('{self.manager.ip}', {REGISTRY_PORT}), 1)"
            probe = sh("ip", "netns", "exec", self.manager.netns, sys.executable, "-c", connect, check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the swarm's registry did not start: {(folder / 'registry.log').read_text()}")
            time.sleep(0.2)

    def load(self, image: str) -> None:
        """Copy an image from the main engine into every node (once per lab)."""
        if image in self._loaded:
            return
        archive = self.state / "image.tar"
        sh("docker", "save", "-o", str(archive), image, timeout=600)

        def load_into(n: Node) -> None:
            n.docker("load", "-q", "-i", str(archive), timeout=600)

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(load_into, self.nodes))
        archive.unlink()
        self._loaded.add(image)

    def where(self, container_label: str) -> dict[str, list[str]]:
        """node name -> the stages (``io.pipekit.stage`` labels) of containers labelled so there."""
        found: dict[str, list[str]] = {}
        for n in self.nodes:
            out = n.docker(
                "ps",
                "-a",
                "--filter",
                f"label={container_label}",
                "--format",
                '{{.Label "io.pipekit.stage"}}',
                check=False,
            ).stdout.split()
            if out:
                found[n.name] = out
        return found

    def leftovers(self) -> list[str]:
        """Every pipekit object still on any node (services, containers, networks)."""
        left = [
            f"service {s}"
            for s in self.manager.docker("service", "ls", "-q", "--filter", "label=io.pipekit.managed").stdout.split()
        ]
        for n in self.nodes:
            if n._pid() is None:
                continue
            left += [
                f"{n.name}: container {c}"
                for c in n.docker("ps", "-aq", "--filter", "label=io.pipekit.managed").stdout.split()
            ]
            left += [
                f"{n.name}: network {c}"
                for c in n.docker("network", "ls", "-q", "--filter", "label=io.pipekit.managed").stdout.split()
            ]
        return left

    def down(self) -> None:
        try:
            pid = int((self.run / "registry.pid").read_text())
            os.killpg(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        if self._registry_proc is not None:
            self._registry_proc.wait(timeout=10)
            self._registry_proc = None
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(Node.stop, self.nodes))
        for ns in [n.netns for n in self.nodes] + [self.bridge_ns]:
            sh("ip", "netns", "del", ns, check=False)
        for n in self.nodes:  # a link whose move into the bridge's namespace never happened
            sh("ip", "link", "del", n.link, check=False)
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.rmtree(self.run, ignore_errors=True)
        self._loaded.clear()


if __name__ == "__main__":
    lab = SwarmLab("hand")  # the lab started by hand: one per machine, kept until `down`
    if sys.argv[1:] == ["up"]:
        lab.up(by_hand=True)
        print(f"export DOCKER_HOST={lab.manager.host} PIPEKIT_BACKEND=swarm PIPEKIT_REGISTRY={lab.registry}")
    elif sys.argv[1:] == ["down"]:
        lab.down()
    else:
        sys.exit("usage: python tests/swarm_lab.py up|down")
