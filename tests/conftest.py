"""Shared fixtures: a real Docker engine and a tiny busybox image, built once per machine.

The suite runs in two pytest-xdist workers (``-n 2`` in setup.cfg; ``-n 0`` for one process).
Session fixtures run once per worker: images are built under a machine-wide lock, by the first
worker that finds them missing; the second engine and the swarm lab have names, folders and
subnets of their own per process (tests/labs.py), and every test that uses one of them runs in the
same worker (:func:`pytest_collection_modifyitems`), so each is started once per session.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from labs import machine_lock

import pipekit as pk
from pipekit._run.runner import run_setup
from pipekit._run.session import RunRequest, setup

ROOT = Path(__file__).parent.parent
PIPELINES = Path(__file__).parent / "pipelines"
# The same image scripts/local-images.sh builds, from the same Dockerfile.
BUSYBOX_IMAGE = "pipekit-local/busybox:latest"
BUSYBOX_DOCKERFILE = ROOT / "scripts" / "images" / "busybox" / "Dockerfile"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

#: fixture -> the xdist group of the tests that use it (``--dist loadgroup``): one worker starts it
ONE_WORKER = {"swarm": "swarm-lab", "remote_engine": "remote-engine"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the swarm lab or the second engine go to one worker each (starting one costs
    15 to 35 s and three engines). tryfirst: pytest-xdist reads the groups in its own hook of this
    name, which pluggy calls before a conftest's; a group marked after it is silently ignored."""
    for item in items:
        groups = sorted({ONE_WORKER[f] for f in getattr(item, "fixturenames", ()) if f in ONE_WORKER})
        if groups:
            item.add_marker(pytest.mark.xdist_group("+".join(groups)))


@pytest.fixture(autouse=True)
def _not_in_a_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """pipekit's own tests print pipekit's own console, whichever CI runs them (tests/test_ci.py
    sets these variables where it means to)."""
    for name in ("GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "GITHUB_STEP_SUMMARY", "PIPEKIT_CI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def docker_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A client of the engine. pipekit's own CI always starts one: no engine is a failure, not a skip.
    At the end, the copies of the tests' workspaces that copy mode kept in it go."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # pragma: no cover - the message is the point
        pytest.fail(f"no Docker engine answers ({e}); run scripts/start-engine.sh first", pytrace=False)
    yield client
    from helpers import drop_workspace_bases

    drop_workspace_bases(client, tmp_path_factory.getbasetemp())
    client.close()


def _busybox_binary() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        p = Path(candidate)
        if p.is_file() and not p.is_symlink():
            return p
    found = shutil.which("busybox")
    if found:
        return Path(found).resolve()
    pytest.fail("no static busybox on this machine; install busybox-static", pytrace=False)


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    """A FROM-scratch image with a static busybox (sh, sleep, echo, ...), built if missing (one
    worker builds it, the other waits for it)."""
    if _have_image(docker_client, BUSYBOX_IMAGE):
        return BUSYBOX_IMAGE
    with machine_lock("images"):
        if not _have_image(docker_client, BUSYBOX_IMAGE):
            _build_busybox(docker_client)
    return BUSYBOX_IMAGE


def _have_image(docker_client: Any, name: str) -> bool:
    import docker

    try:
        docker_client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def _build_busybox(docker_client: Any) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(BUSYBOX_DOCKERFILE), arcname="Dockerfile")
        tar.add(str(_busybox_binary()), arcname="busybox")
    buf.seek(0)
    docker_client.images.build(fileobj=buf, custom_context=True, tag=BUSYBOX_IMAGE, rm=True)


class Events:
    """Every log event of a run, with the monotonic time it was emitted."""

    def __init__(self) -> None:
        self.items: list[tuple[float, dict[str, Any]]] = []

    def __call__(self, _logger: Any, _name: str, event_dict: Any) -> Any:
        self.items.append((time.monotonic(), dict(event_dict)))
        return event_dict

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [e for _, e in self.items if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    def lines(self, stage: str) -> list[str]:
        return [e["line"] for e in self.named("output", stage=stage)]

    def time_of(self, event: str, **match: Any) -> float:
        for t, e in self.items:
            if e["event"] == event and all(e.get(k) == v for k, v in match.items()):
                return t
        raise AssertionError(f"no event {event!r} with {match}")


@pytest.fixture
def docker_backend(docker_client: Any) -> Any:
    from pipekit._backends.docker.backend import DockerBackend

    return DockerBackend(docker_client)


@pytest.fixture
def run_on_docker(docker_backend: Any, busybox_image: str, docker_client: Any) -> Any:
    """Run a pipeline on the real engine with every test image mapped to busybox; checks cleanup."""
    run_ids: list[str] = []

    def run(pipeline: pk.Pipeline | str | Path, *targets: str, **kwargs: Any) -> tuple[pk.RunResult, Events]:
        events = Events()
        run = setup(
            RunRequest(
                pipeline=pipeline,
                targets=targets,
                backend=docker_backend,
                log_format="json",
                log_file=io.StringIO(),
                log_processors=[events],
                image_map={"alpine:3.20": busybox_image, "alpine:3.19": busybox_image, "busybox": busybox_image},
                **kwargs,
            )
        )
        run_ids.append(run.run_id)
        return run_setup(run), events

    yield run
    for run_id in run_ids:
        left = docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"})
        assert not left, f"run {run_id} left containers behind: {[c.name for c in left]}"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


PYTHON_BASE_IMAGE = "pipekit-local/python:3.11-slim"


@pytest.fixture(scope="session")
def python_base_image(docker_client: Any) -> str:
    """A Debian bookworm image with python3, built by scripts/images/python-base.sh if missing
    (by one worker; the other waits for it)."""
    import subprocess

    if _have_image(docker_client, PYTHON_BASE_IMAGE):
        return PYTHON_BASE_IMAGE
    with machine_lock("images"):
        if _have_image(docker_client, PYTHON_BASE_IMAGE):
            return PYTHON_BASE_IMAGE
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "images" / "python-base.sh"), PYTHON_BASE_IMAGE],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            pytest.fail(f"could not build {PYTHON_BASE_IMAGE}:\n{proc.stderr}", pytrace=False)
    return PYTHON_BASE_IMAGE


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Distribution registry (Debian's docker-registry) on a free 127.0.0.1 port, with a login."""
    import socket
    import subprocess
    import urllib.error
    import urllib.request

    import bcrypt

    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed (apt-get install docker-registry)", pytrace=False)
    folder = tmp_path_factory.mktemp("registry")
    user, password = "ci-pusher-7f3a", "s3cret-Pa55word-for-tests"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    (folder / "htpasswd").write_text(f"{user}:{hashed}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "config.yml").write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: pipekit-tests\n    path: {folder / 'htpasswd'}\n"
    )
    log = open(folder / "registry.log", "w")
    proc = subprocess.Popen([binary, "serve", str(folder / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
        except urllib.error.HTTPError as e:
            if e.code == 401:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            log.close()
            pytest.fail(f"the registry did not start: {(folder / 'registry.log').read_text()}", pytrace=False)
        time.sleep(0.1)

    class Registry:
        def __init__(self) -> None:
            self.address, self.user, self.password = address, user, password

    yield Registry()
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="session")
def remote_engine(busybox_image: str) -> Any:
    """A second engine that cannot see /tmp or the repository, on tcp://127.0.0.1 (like a remote one)."""
    from remote_engine import RemoteEngine

    engine = RemoteEngine()
    try:
        engine.start()
        engine.load(busybox_image)
    except Exception as e:
        engine.stop()
        pytest.fail(f"could not start the remote test engine: {e}", pytrace=False)
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def swarm(busybox_image: str) -> Any:
    """A three-node swarm on this machine (tests/swarm_lab.py), with the busybox image on every node."""
    from swarm_lab import SwarmLab

    lab = SwarmLab()
    try:
        lab.up()
        lab.load(busybox_image)
    except Exception as e:
        lab.down()
        pytest.fail(f"could not start the test swarm: {e}", pytrace=False)
    yield lab
    lab.down()


@pytest.fixture(scope="session")
def browser() -> Any:
    """Headless Chromium (Debian's chromium and chromium-driver, installed by scripts/setup.sh)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("chromium and chromium-driver are not installed: run scripts/setup.sh", pytrace=False)
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()
