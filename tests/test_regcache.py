"""The stage cache shared through a registry (issue 26): two checkouts of one project stand for two
machines (separate ``.pipekit/`` folders, one engine), against a real Distribution registry
(Debian's ``docker-registry``), with a login (the ``registry`` fixture) and without."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import run_console

from pipekit._cli.main import main
from pipekit._history.remote import Tampered, pack_files, restore_files
from pipekit._history.store import History

pytestmark = pytest.mark.docker

PIPELINE = """
import pipekit as pk

@pk.stage(image="busybox", cache=pk.inputs("src/**", outputs=["dist/**"]))
def build(ctx):
    ctx.sh("mkdir -p dist/sub reports && cat src/a.txt > dist/app.bin && echo built >> dist/app.bin")
    ctx.sh("echo nested > dist/sub/n.txt")
    ctx.sh("echo \\"<testsuite name='s' tests='2'><testcase name='t1'/><testcase name='t2'/></testsuite>\\""
           " > reports/junit.xml")
    ctx.junit("reports/junit.xml")
    ctx.archive("dist/app.bin")
    return {"version": "1.0"}

@pk.stage(image="busybox")
def use(ctx, build):
    return ctx.sh("cat dist/app.bin dist/sub/n.txt").stdout.strip() + " v" + build["version"]
"""


class Registry:
    """A Distribution registry of this test's own (its storage can be tampered with)."""

    def __init__(self, folder: Path, auth: bool) -> None:
        import bcrypt

        self.folder = folder
        self.user, self.password = ("cache-bot-19c2", "regcache-Pa55-word-x7") if auth else (None, None)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        config = (
            f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: {self.address}\n"
        )
        if auth:
            assert self.password is not None
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
            (folder / "htpasswd").write_text(f"{self.user}:{hashed}\n")
            config += f"auth:\n  htpasswd:\n    realm: regcache\n    path: {folder / 'htpasswd'}\n"
        (folder / "config.yml").write_text(config)
        self.log = open(folder / "registry.log", "w")
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail("docker-registry is not installed (apt-get install docker-registry)", pytrace=False)
        self.proc = subprocess.Popen([binary, "serve", str(folder / "config.yml")], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail("the registry did not start", pytrace=False)
                time.sleep(0.05)

    def env(self) -> dict[str, str]:
        if self.user is None:
            return {}
        assert self.password is not None
        return {"PIPEKIT_REGISTRY_USER": self.user, "PIPEKIT_REGISTRY_PASSWORD": self.password}

    def tags(self, repo: str) -> list[str]:
        import requests

        auth = (self.user, self.password) if self.user else None
        r = requests.get(f"http://{self.address}/v2/{repo}/tags/list", auth=auth, timeout=5)
        return [] if r.status_code == 404 else list(r.json().get("tags") or [])

    def entries(self, repo: str) -> list[str]:
        """The tags of cache entries (not the pipelines' indexes, ``pk1index-...``)."""
        return [t for t in self.tags(repo) if t.startswith("pk1-")]

    def blobs(self) -> list[Path]:
        return sorted((self.folder / "data").glob("docker/registry/v2/blobs/sha256/*/*/data"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("openreg"), auth=False)
    yield reg
    reg.stop()


@pytest.fixture
def login_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("loginreg"), auth=True)
    yield reg
    reg.stop()


def checkout(root: Path, name: str, pipeline: str = PIPELINE) -> Path:
    """One machine's checkout of the project: same folder name, its own .pipekit/."""
    folder = root / name / "proj"
    (folder / "src").mkdir(parents=True)
    (folder / "pipeline.py").write_text(pipeline)
    (folder / "src" / "a.txt").write_text("payload-from-src\n")
    return folder


def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        code = main(list(argv), out=out, err=err)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return code, out.getvalue(), err.getvalue()


def run_args(folder: Path, busybox: str, *more: str) -> list[str]:
    return ["run", "-f", str(folder), "--log-format", "json", "--image-map", f"busybox={busybox}", "-j", "1", *more]


def events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def finished(out: str, stage: str) -> dict[str, Any]:
    return next(e for e in events(out) if e.get("event") == "stage finished" and e.get("stage") == stage)


def stage_row(folder: Path, stage: str) -> Any:
    h = History(folder)
    try:
        run = h.runs(1)[0]
        return run, next(s for s in h.stages(run.id) if s.name == stage), h.artifacts(run.id), h.tests(run.id)
    finally:
        h.close()


def test_a_second_machine_gets_the_first_ones_results(tmp_path: Path, busybox_image: str, login_registry: Any) -> None:
    """Machine A runs with readwrite and pushes; machine B (a fresh checkout) takes build from the
    registry: its return value, its declared output files (use reads them), its artifact and its
    test report; the password reaches no output, log or record."""
    reg = login_registry
    target = f"{reg.address}/acme/proj-cache"
    a, b = checkout(tmp_path, "a"), checkout(tmp_path, "b")
    code, out, err = cli(
        *run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"), env=reg.env()
    )
    assert code == 0, out + err
    assert finished(out, "build")["status"] == "succeeded"
    tags = reg.tags("acme/proj-cache")
    assert len(reg.entries("acme/proj-cache")) == 1 and len(tags) == 2  # build's entry, the pipeline's index
    a_run = stage_row(a, "build")[0]

    proc = run_console(run_args(b, busybox_image, "--cache-registry", target), env=reg.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    build = finished(proc.stdout, "build")
    assert build["status"] == "cached"
    assert build["reason"].startswith(f"cache hit: registry {target}, run {a_run.id} on host ")
    assert finished(proc.stdout, "use")["status"] == "succeeded"
    assert (b / "dist" / "app.bin").read_text() == "payload-from-src\nbuilt\n"
    assert (b / "dist" / "sub" / "n.txt").read_text() == "nested\n"
    _run, row, artifacts, tests = stage_row(b, "use")
    assert row.output and "payload-from-src" in json.loads(row.output) and json.loads(row.output).endswith("v1.0")
    assert [x.path for x in artifacts if x.stage == "build"] == ["dist/app.bin"]
    assert [(t.stage, t.tests) for t in tests] == [("build", 2)]
    assert reg.password not in proc.stdout + proc.stderr + out + err
    for path in [*b.joinpath(".pipekit").rglob("*"), *a.joinpath(".pipekit").rglob("*")]:
        if path.is_file():
            assert reg.password.encode() not in path.read_bytes(), path
    assert reg.tags("acme/proj-cache") == tags  # read mode: B pushed nothing
    b_run = stage_row(b, "build")[0]
    code, out, err = cli(*run_args(b, busybox_image))  # no registry now: the hit was kept here
    assert code == 0, out + err
    assert finished(out, "build")["status"] == "cached"
    assert finished(out, "build")["reason"] == f"cache hit: result of run {b_run.id}"
    code, out, err = cli("plan", "-f", str(b), "--image-map", f"busybox={busybox_image}")
    assert f"[cached: the result of run {b_run.id}]" in out, out + err


def test_without_a_login_and_read_mode_never_pushes(tmp_path: Path, busybox_image: str, open_registry: Any) -> None:
    target = f"{open_registry.address}/team/cache"
    a, b = checkout(tmp_path, "a"), checkout(tmp_path, "b")
    code, out, err = cli(*run_args(a, busybox_image, "--cache-registry", target))  # default: read
    assert code == 0, out + err
    assert open_registry.tags("team/cache") == []
    assert open_registry.blobs() == []
    code, out, err = cli(*run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "write", "--no-cache"))
    assert code == 0 and open_registry.tags("team/cache") == []  # --no-cache: no cache at all
    code, out, err = cli(*run_args(b, busybox_image, "--cache-registry", target, "--cache-mode", "write"))
    assert code == 0, out + err
    assert len(open_registry.entries("team/cache")) == 1
    assert finished(out, "build")["status"] == "succeeded"
    c = checkout(tmp_path, "c")
    code, out, err = cli(*run_args(c, busybox_image), env={"PIPEKIT_CACHE_REGISTRY": target})
    assert code == 0, out + err
    assert finished(out, "build")["status"] == "cached"
    assert (c / "dist" / "app.bin").is_file()


@pytest.mark.parametrize("where", ["blob", "manifest"])
def test_a_tampered_entry_is_a_miss_and_a_warning(
    tmp_path: Path, busybox_image: str, open_registry: Any, where: str
) -> None:
    """``blob``: outputs larger than what a manifest embeds, their blobs changed in the registry's
    storage; ``manifest``: small outputs embedded in the manifest, the manifest changed there, and
    its copy in the pipeline's index too (the index no longer matches its digest: refused, said)."""
    target = f"{open_registry.address}/team/cache"
    a, b = checkout(tmp_path, "a"), checkout(tmp_path, "b")
    content = "payload-from-src\n" * (2000 if where == "blob" else 1)
    for folder in (a, b):
        (folder / "src" / "a.txt").write_text(content)
    code, out, err = cli(*run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"))
    assert code == 0, out + err
    tampered = 0
    for blob in open_registry.blobs():
        data = blob.read_bytes()
        if where == "blob" and b"payload-from-src" in data:
            blob.write_bytes(data.replace(b"payload-from-src", b"payload-evil-xyz"))
            tampered += 1
        if where == "manifest" and b'"application/vnd.pipekit.cache.index.v1"' in data:
            blob.write_bytes(data + b" ")  # any change: it no longer matches its digest
            continue
        if where == "manifest" and b'"artifactType"' in data:
            manifest = json.loads(data)
            layer = manifest["layers"][0]
            evil = _tar({"dist/app.bin": b"payload-evil-xyz\n"})
            layer["data"] = base64.b64encode(evil).decode()
            blob.write_bytes(json.dumps(manifest).encode())
            tampered += 1
    assert tampered == (2 if where == "blob" else 1)  # the files' tar and the archived artifact; the manifest
    code, out, err = cli(*run_args(b, busybox_image, "--cache-registry", target))
    assert code == 0, out + err
    assert finished(out, "build")["status"] == "succeeded"  # it ran
    refused = [e for e in events(out) if e.get("event") == "cache entry refused"]
    assert refused and "does not match its digest" in refused[0]["reason"], out
    if where == "manifest":
        index = [e for e in events(out) if e.get("event") == "cache index refused"]
        assert len(index) == 1 and "does not match its digest" in index[0]["reason"], out
    assert (b / "dist" / "app.bin").read_text() == content + "built\n"
    assert b"payload-evil" not in b"".join(p.read_bytes() for p in b.rglob("*") if p.is_file())


def test_a_registry_that_is_down_never_fails_the_run(tmp_path: Path, busybox_image: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    a = checkout(tmp_path, "a")
    started = time.monotonic()
    code, out, err = cli(
        *run_args(a, busybox_image, "--cache-registry", f"127.0.0.1:{port}/x", "--cache-mode", "readwrite")
    )
    assert code == 0, out + err
    assert time.monotonic() - started < 60
    warnings = [e for e in events(out) if e.get("event") == "cache registry unavailable"]
    assert len(warnings) == 1, out
    assert finished(out, "build")["status"] == "succeeded"


class StoppingProxy:
    """A TCP proxy to the registry that stops (every connection cut, nothing more accepted) when a
    request to store a manifest comes: the blobs went up, the manifest never does. ``stops=False``:
    it only notes the requests that pass (their first lines, in ``seen``)."""

    def __init__(self, upstream: str, stops: bool = True) -> None:
        self.stops = stops
        self.seen: list[str] = []
        host, port = upstream.split(":")
        self.upstream = (host, int(port))
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            self.conns += [client, up]
            threading.Thread(target=self._pipe, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                first = data.split(b"\r\n", 1)[0]
                if watch and b" /v2/" in first and first.endswith(b" HTTP/1.1"):
                    self.seen.append(first.decode())
                if watch and self.stops and b"PUT /v2/" in first and b"/manifests/" in first:
                    self.stop()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped.set()
        self.server.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass


def test_a_registry_that_stops_mid_push_leaves_no_entry(tmp_path: Path, busybox_image: str, open_registry: Any) -> None:
    proxy = StoppingProxy(open_registry.address)
    a, b = checkout(tmp_path, "a"), checkout(tmp_path, "b")
    code, out, err = cli(
        *run_args(a, busybox_image, "--cache-registry", f"{proxy.address}/team/cache", "--cache-mode", "readwrite")
    )
    assert code == 0, out + err
    assert proxy.stopped.is_set()
    assert [e for e in events(out) if e.get("event", "").startswith("cache registry")], out
    assert open_registry.blobs()  # the blobs went up...
    assert open_registry.tags("team/cache") == []  # ...but no entry names them
    code, out, err = cli(*run_args(b, busybox_image, "--cache-registry", f"{open_registry.address}/team/cache"))
    assert code == 0, out + err
    assert finished(out, "build")["status"] == "succeeded"


def _tar(members: dict[str, bytes], link: tuple[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tar.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize(
    "members,link",
    [
        ({"dist/ok": b"1", "pipeline.py": b"evil"}, None),  # not a declared output
        ({"dist/../pipeline.py": b"evil"}, None),
        ({"dist/.git/hooks/post-checkout": b"evil"}, None),
        ({"/etc/passwd": b"evil"}, None),
        ({}, ("dist/link", "/etc")),
    ],
)
def test_restore_writes_only_declared_regular_files(tmp_path: Path, members: dict[str, bytes], link: Any) -> None:
    (tmp_path / "pipeline.py").write_text("good")
    with pytest.raises(Tampered):
        restore_files(tmp_path, _tar(members, link), ["dist/**"])
    assert (tmp_path / "pipeline.py").read_text() == "good"
    assert not (tmp_path / "dist").exists()  # checked before anything is written


def test_restore_never_writes_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    ws = tmp_path / "ws"
    (ws / "dist").mkdir(parents=True)
    (ws / "dist" / "deep").symlink_to(outside)
    with pytest.raises(Tampered):
        restore_files(ws, _tar({"dist/deep/x": b"evil"}), ["dist/**"])
    assert list(outside.iterdir()) == []


def test_pack_files_skips_links_out_and_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "a").write_bytes(b"a")
    first = pack_files(tmp_path, ["dist/**"])
    os.utime(tmp_path / "dist" / "a", (1, 1))
    assert pack_files(tmp_path, ["dist/**"]) == first and first[1] == ("dist/a",)
    assert pack_files(tmp_path, ["nothing/**"]) == (None, ())


CHAIN = (
    PIPELINE
    + """
@pk.stage(image="busybox", cache=pk.inputs())
def pack(ctx, build):
    return "packed " + build["version"]
"""
)


def test_plan_says_where_each_stage_would_come_from_and_cache_lists_the_registry(
    tmp_path: Path, busybox_image: str, login_registry: Any
) -> None:
    reg = login_registry
    target = f"{reg.address}/acme/chain"
    a, b, c = checkout(tmp_path, "a", CHAIN), checkout(tmp_path, "b", CHAIN), checkout(tmp_path, "c", CHAIN)
    args = ["--image-map", f"busybox={busybox_image}", "--cache-registry", target]
    code, out, err = cli(
        *run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"), env=reg.env()
    )
    assert code == 0, out + err
    a_run = stage_row(a, "build")[0].id
    assert len(reg.entries("acme/chain")) == 2  # build and pack

    plan_b = run_console(["plan", "-f", str(b), *args], env=reg.env())
    assert plan_b.returncode == 0, plan_b.stdout + plan_b.stderr
    lines = {line.split(". ", 1)[1].split(" ")[0]: line for line in plan_b.stdout.splitlines() if ". " in line}
    assert f"[registry hit: run {a_run} on host " in lines["build"]
    assert f"[registry hit: run {a_run} on host " in lines["pack"]  # its key needed build's result: a 2nd round
    assert lines["use"].endswith("after build")  # it runs: it has no cache=
    assert "2 from the registry cache" in plan_b.stdout

    plan_a = run_console(["plan", "-f", str(a), "--format", "json", *args], env=reg.env())
    decisions = {e["stage"]: e["decision"] for e in events(plan_a.stdout)}
    assert decisions == {"build": "cached", "pack": "cached", "use": "run"}  # local hits

    (c / "src" / "a.txt").write_text("changed\n")
    plan_c = run_console(["plan", "-f", str(c), "--format", "json", *args], env=reg.env())
    whys = {e["stage"]: (e["decision"], e.get("why")) for e in events(plan_c.stdout)}
    assert whys["build"] == ("run", "cache miss here and in the registry")

    report = tmp_path / "b-report.html"
    code, out, err = cli(
        *run_args(b, busybox_image, "--cache-registry", target, "--report", str(report)), env=reg.env()
    )
    assert code == 0, out + err
    assert f"cache hit: registry {target}, run {a_run} on host" in report.read_text()

    listed = run_console(["cache", "list", "--remote", "-f", str(b), "--cache-registry", target], env=reg.env())
    assert listed.returncode == 0, listed.stderr
    assert f"2 entries in registry {target}" in listed.stdout
    build_line = next(line for line in listed.stdout.splitlines() if " build " in line)
    key = build_line.split()[0]
    shown = run_console(["cache", "inspect", "--remote", key, "-f", str(b), "--cache-registry", target], env=reg.env())
    assert shown.returncode == 0, shown.stderr
    assert (
        "stage:     build" in shown.stdout and "dist/app.bin" in shown.stdout and f"run:       {a_run}" in shown.stdout
    )
    denied = run_console(["cache", "list", "--remote", "-f", str(b), "--cache-registry", target])  # no login
    assert denied.returncode != 0 and "PIPEKIT_REGISTRY_USER" in denied.stderr and "Traceback" not in denied.stderr
    pruned = run_console(
        ["cache", "prune", "--remote", "--stage", "build", "-f", str(b), "--cache-registry", target], env=reg.env()
    )
    assert pruned.returncode == 0 and f"removed 1 entries from registry {target}" in pruned.stdout
    assert len(reg.entries("acme/chain")) == 1
    kept = run_console(
        ["cache", "prune", "--remote", "--older-than", "1d", "-f", str(b), "--cache-registry", target], env=reg.env()
    )
    assert kept.returncode == 0 and "removed 0 entries" in kept.stdout


def test_a_refused_login_and_a_slow_registry_never_fail_the_run(
    tmp_path: Path, busybox_image: str, login_registry: Any
) -> None:
    target = f"{login_registry.address}/acme/x"
    a = checkout(tmp_path, "a", CHAIN)
    wrong = {"PIPEKIT_REGISTRY_USER": login_registry.user, "PIPEKIT_REGISTRY_PASSWORD": "wrong-password-123"}
    code, out, err = cli(
        *run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"), env=wrong
    )
    assert code == 0, out + err
    failed = [e for e in events(out) if e.get("event") == "cache registry failed"]
    assert len(failed) == 2, out  # one for reading, one for pushing: not one per stage
    assert "refused" in failed[0]["error"] and "PIPEKIT_REGISTRY_USER" in failed[0]["error"]
    assert "wrong-password-123" not in out + err
    assert login_registry.tags("acme/x") == []

    with socket.socket() as hole:  # accepts connections, never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        b = checkout(tmp_path, "b", CHAIN)
        started = time.monotonic()
        slow = f"127.0.0.1:{hole.getsockname()[1]}/acme/x"
        code, out, err = cli(
            *run_args(b, busybox_image, "--cache-registry", slow, "--cache-mode", "readwrite"),
            env={"PIPEKIT_CACHE_TIMEOUT": "1"},
        )
        took = time.monotonic() - started
    assert code == 0, out + err
    assert [e["stage"] for e in events(out) if e.get("event") == "cache registry unavailable"] == ["build"]
    assert {finished(out, s)["status"] for s in ("build", "pack", "use")} == {"succeeded"}
    assert took < 30


class TokenFront:
    """A Bearer-token front to an open registry, as Docker Hub, GHCR or GitLab put their registries
    behind a token service: /v2/ answers 401 with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…``
    until a request carries a token that /token gave for the right login."""

    def __init__(self, upstream: str, user: str, password: str) -> None:
        import base64
        import http.server

        front = self
        self.tokens: dict[str, str] = {}  # token -> scope
        self.scopes: list[str] = []
        good = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                import http.client

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        if k.lower() == "location" and v.startswith(f"http://{upstream}"):
                            v = v.replace(f"http://{upstream}", f"http://{front.address}")
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _handle(self) -> None:
                if self.path.startswith("/token"):
                    from urllib.parse import parse_qs, urlparse

                    scope = parse_qs(urlparse(self.path).query).get("scope", [""])[0]
                    if self.headers.get("Authorization") != good:
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    token = os.urandom(8).hex()
                    front.tokens[token] = scope
                    front.scopes.append(scope)
                    body = json.dumps({"token": token}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                auth = self.headers.get("Authorization", "")
                scope = front.tokens.get(auth.removeprefix("Bearer "), "") if auth.startswith("Bearer ") else ""
                needs = "pull,push" if self.command in ("POST", "PUT", "PATCH", "DELETE") else "pull"
                if not scope.endswith(needs) and not scope.endswith("pull,push"):
                    import re

                    repo = re.sub(r"/(manifests|blobs|tags)/.*$", "", self.path.split("/v2/", 1)[-1])
                    challenge = (
                        f'Bearer realm="http://{front.address}/token",service="front",scope="repository:{repo}:{needs}"'
                    )
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", challenge)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._forward()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_bearer_token_flow_of_docker_hub_like_registries(
    tmp_path: Path, busybox_image: str, open_registry: Any
) -> None:
    front = TokenFront(open_registry.address, "robot", "tok-en-pass-77")
    try:
        env = {"PIPEKIT_REGISTRY_USER": "robot", "PIPEKIT_REGISTRY_PASSWORD": "tok-en-pass-77"}
        target = f"{front.address}/team/cache"
        a, b = checkout(tmp_path, "a"), checkout(tmp_path, "b")
        code, out, err = cli(
            *run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"), env=env
        )
        assert code == 0, out + err
        assert not [e for e in events(out) if e.get("event", "").startswith("cache registry")], out
        assert open_registry.tags("team/cache") and "repository:team/cache:pull,push" in front.scopes
        code, out, err = cli(*run_args(b, busybox_image, "--cache-registry", target), env=env)
        assert code == 0, out + err
        assert finished(out, "build")["status"] == "cached"
        assert "tok-en-pass-77" not in out + err
    finally:
        front.close()


IMAGES = """
import pipekit as pk

@pk.stage(image="busybox", cache=pk.inputs("img/Dockerfile"))
def img(ctx):
    return ctx.docker.build("img", tag="TAG")

@pk.stage(image=img)
def inside(ctx, img):
    return ctx.sh("cat /marker").stdout.strip()
"""


def test_a_hit_brings_the_images_of_its_result_by_digest(
    tmp_path: Path, busybox_image: str, login_registry: Any, docker_client: Any
) -> None:
    """The image a cached stage built travels with its entry (pushed to the cache's repository,
    named by digest); on the second machine, where the engine lost it, it is pulled by digest
    with the cache's login and the stage that runs in it runs."""
    reg = login_registry
    target = f"{reg.address}/acme/imgs"
    tag = f"pipekit-regcache-test/img-{os.urandom(4).hex()}:1"
    pipeline = IMAGES.replace("TAG", tag)
    a, b = checkout(tmp_path, "a", pipeline), checkout(tmp_path, "b", pipeline)
    for folder in (a, b):
        (folder / "img").mkdir()
        (folder / "img" / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo {tag} > /marker\n")
    pulled: list[str] = []
    try:
        code, out, err = cli(
            *run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"), env=reg.env()
        )
        assert code == 0, out + err
        pushed = [e for e in events(out) if e.get("event") == "cache image pushed"]
        assert len(pushed) == 1 and pushed[0]["remote"].startswith(f"{target}@sha256:"), out
        image_id = docker_client.images.get(tag).id
        docker_client.images.remove(tag, force=True)  # the second machine's engine does not have it
        for ref in [f"{target}:img-{image_id.removeprefix('sha256:')[:24]}"]:
            try:
                docker_client.images.remove(ref, force=True)
            except Exception:
                pass
        code, out, err = cli(*run_args(b, busybox_image, "--cache-registry", target), env=reg.env())
        assert code == 0, out + err
        assert finished(out, "img")["status"] == "cached"
        assert [e["image"] for e in events(out) if e.get("event") == "cache image pulled"] == [pushed[0]["remote"]]
        assert finished(out, "inside")["status"] == "succeeded"
        assert json.loads(stage_row(b, "inside")[1].output) == tag
        pulled = [t for i in docker_client.images.list() if i.id == image_id for t in i.tags] or [image_id]
        assert reg.password not in out + err
    finally:
        for ref in [tag, *pulled]:
            try:
                docker_client.images.remove(ref, force=True)
            except Exception:
                pass


def test_pk_credentials_for_the_cache_from_python(tmp_path: Path, busybox_image: str, login_registry: Any) -> None:
    import pipekit as pk

    reg = login_registry
    target = f"{reg.address}/acme/py"
    a, b = checkout(tmp_path, "a"), checkout(tmp_path, "b")
    creds = pk.Credentials(pk.secret("CACHE_USER", mask=False), pk.secret("CACHE_TOKEN"))
    secrets = {"CACHE_USER": reg.user, "CACHE_TOKEN": reg.password}
    logs = io.StringIO()
    common: dict[str, Any] = {"image_map": {"busybox": busybox_image}, "record": True, "secrets": secrets}
    first = pk.run(
        str(a / "pipeline.py"),
        cache_registry=target,
        cache_mode="readwrite",
        cache_credentials=creds,
        log_format="json",
        log_file=logs,
        **common,
    )
    assert first.status == "succeeded" and len(reg.entries("acme/py")) == 1, logs.getvalue()
    second = pk.run(str(b / "pipeline.py"), cache_registry=target, cache_credentials=creds, log_file=logs, **common)
    assert second.stages["build"].status == "cached"
    assert reg.password not in logs.getvalue()


SECRET_OUT = """
import pipekit as pk

@pk.stage(image="busybox", env={"TOKEN": pk.secret("API_TOKEN")}, cache=pk.inputs(outputs=["dist/**"]))
def build(ctx):
    ctx.sh('mkdir -p dist && echo "$TOKEN" > dist/conf.txt')
    return "built"
"""


def test_an_entry_whose_files_hold_a_secret_is_not_pushed(
    tmp_path: Path, busybox_image: str, open_registry: Any
) -> None:
    target = f"{open_registry.address}/team/secret"
    a = checkout(tmp_path, "a", SECRET_OUT)
    env = {"API_TOKEN": "tok-1234567890-secret"}
    code, out, err = cli(*run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"), env=env)
    assert code == 0, out + err
    refused = [e for e in events(out) if e.get("event") == "cache entry not pushed"]
    assert refused and "secret" in refused[0]["reason"], out
    assert open_registry.tags("team/secret") == [] and open_registry.blobs() == []


def test_mistakes_are_clear_messages(tmp_path: Path, busybox_image: str) -> None:
    a = checkout(tmp_path, "a")
    bad = run_console(["run", "-f", str(a), "--cache-registry", "NotARegistry"])
    assert bad.returncode == 2 and "is not REGISTRY/REPOSITORY" in bad.stderr and "Traceback" not in bad.stderr
    assert "build" not in bad.stdout + bad.stderr  # refused before any stage
    mode = run_console(["run", "-f", str(a), "--cache-registry", "127.0.0.1:5/x", "--cache-mode", "sometimes"])
    assert mode.returncode == 2 and "sometimes" in mode.stderr and "Traceback" not in mode.stderr
    remote = run_console(["cache", "list", "--remote", "-f", str(a)], env={"PIPEKIT_CACHE_REGISTRY": ""})
    assert remote.returncode == 2 and "--cache-registry REGISTRY/REPO" in remote.stderr
    (a / "pyproject.toml").write_text(
        '[tool.pipekit]\ncache-registry = "127.0.0.1:1/team/cache"\ncache-mode = "read"\n'
    )
    down = run_console(["cache", "list", "--remote", "-f", str(a)], cwd=a)
    assert (
        down.returncode == 3 and "Cannot reach registry 127.0.0.1:1" in down.stderr and "Traceback" not in down.stderr
    )


def test_plan_with_a_registry_that_never_answers_is_bounded(tmp_path: Path, busybox_image: str) -> None:
    a = checkout(tmp_path, "a", CHAIN)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        started = time.monotonic()
        plan = run_console(
            ["plan", "-f", str(a), "--image-map", f"busybox={busybox_image}"],
            env={"PIPEKIT_CACHE_REGISTRY": f"127.0.0.1:{hole.getsockname()[1]}/x/y"},
        )
        took = time.monotonic() - started
    assert plan.returncode == 0, plan.stderr
    assert "warning: the cache registry" in plan.stderr and "shown as misses" in plan.stderr
    assert "build (" in plan.stdout and "registry hit" not in plan.stdout
    assert took < 20


HOST_CHAIN = """
import pathlib
import pipekit as pk

@pk.stage(cache=pk.inputs("src/**", outputs=["out/s0.txt"]))
def s0(ctx):
    p = pathlib.Path(ctx.workspace)
    (p / "out").mkdir(exist_ok=True)
    (p / "out/s0.txt").write_text("s0 " + (p / "src/a.txt").read_text())
    return "zero " + (p / "src/a.txt").read_text().strip()

@pk.stage(cache=pk.inputs(outputs=["out/s1.txt"]))
def s1(ctx, s0):
    (pathlib.Path(ctx.workspace) / "out/s1.txt").write_text("s1 after " + s0)
    return "one after " + s0

@pk.stage(cache=pk.inputs(outputs=["out/s2.txt"]))
def s2(ctx, s1):
    (pathlib.Path(ctx.workspace) / "out/s2.txt").write_text("s2 after " + s1)
    return "two after " + s1
"""


def _entry_requests(seen: list[str]) -> list[str]:
    return [line for line in seen if "/manifests/pk1-" in line or "/blobs/" in line]


def test_a_run_lists_the_registry_once_and_its_stages_need_no_request(
    tmp_path: Path, busybox_image: str, open_registry: Any
) -> None:
    """A run reads the tag list and the pipeline's index when it starts: a stage the index names is
    a hit without a request of its own, a miss needs none either; an entry pruned from the registry
    is a miss even though the index still names it (the tag list decides)."""
    target = f"{open_registry.address}/team/cache"
    a = checkout(tmp_path, "a", HOST_CHAIN)
    code, out, err = cli(*run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"))
    assert code == 0, out + err
    assert len(open_registry.entries("team/cache")) == 3 and len(open_registry.tags("team/cache")) == 4

    proxy = StoppingProxy(open_registry.address, stops=False)
    try:
        b = checkout(tmp_path, "b", HOST_CHAIN)
        code, out, err = cli(*run_args(b, busybox_image, "--cache-registry", f"{proxy.address}/team/cache"))
        assert code == 0, out + err
        assert [finished(out, s)["status"] for s in ("s0", "s1", "s2")] == ["cached"] * 3, out
        assert (b / "out" / "s2.txt").read_text() == "s2 after one after zero payload-from-src"
        assert len([line for line in proxy.seen if "/tags/list" in line]) == 1, proxy.seen
        assert len([line for line in proxy.seen if "/manifests/pk1index-" in line]) == 1, proxy.seen
        assert _entry_requests(proxy.seen) == [], proxy.seen

        proxy.seen.clear()
        c = checkout(tmp_path, "c", HOST_CHAIN)
        (c / "src" / "a.txt").write_text("other sources\n")
        code, out, err = cli(*run_args(c, busybox_image, "--cache-registry", f"{proxy.address}/team/cache"))
        assert code == 0, out + err
        assert [finished(out, s)["status"] for s in ("s0", "s1", "s2")] == ["succeeded"] * 3, out
        assert _entry_requests(proxy.seen) == [], proxy.seen  # three misses, not one request
    finally:
        proxy.stop()

    pruned = run_console(["cache", "prune", "--remote", "--stage", "s0", "-f", str(a), "--cache-registry", target])
    assert pruned.returncode == 0 and "removed 1 entries" in pruned.stdout, pruned.stdout + pruned.stderr
    d = checkout(tmp_path, "d", HOST_CHAIN)
    code, out, err = cli(*run_args(d, busybox_image, "--cache-registry", target))
    assert code == 0, out + err
    assert finished(out, "s0")["status"] == "succeeded"  # pruned: the index's copy is not used
    assert [finished(out, s)["status"] for s in ("s1", "s2")] == ["cached"] * 2  # same s0 result: same keys


def test_an_index_whose_copy_of_an_entry_does_not_match_is_a_miss_and_a_warning(
    tmp_path: Path, busybox_image: str, open_registry: Any
) -> None:
    """Someone who may push writes an index whose copy of s0's manifest embeds other files than its
    digest names: that copy is checked as the entry itself would be; s0 runs, nothing evil is written."""
    from pipekit._history.oci import OciClient
    from pipekit._history.remote import index_tag

    target = f"{open_registry.address}/team/cache"
    a = checkout(tmp_path, "a", HOST_CHAIN)
    code, out, err = cli(*run_args(a, busybox_image, "--cache-registry", target, "--cache-mode", "readwrite"))
    assert code == 0, out + err
    client = OciClient(target)
    try:
        tag = index_tag("proj")  # the pipeline is named after its folder
        found = client.manifest(tag)
        assert found is not None, open_registry.tags("team/cache")
        manifest = json.loads(found[1])
        index = json.loads(base64.b64decode(manifest["config"]["data"]))
        entry = next(e for e in index["entries"] if e["stage"] == "s0")
        copy = json.loads(entry["manifest"])
        copy["layers"][0]["data"] = base64.b64encode(_tar({"out/s0.txt": b"s0 evil\n"})).decode()
        entry["manifest"] = json.dumps(copy)
        data = json.dumps(index).encode()
        digest = client.put_blob(data)
        manifest["config"] = {**manifest["config"], "digest": digest, "size": len(data)}
        manifest["config"]["data"] = base64.b64encode(data).decode()
        client.put_manifest(tag, json.dumps(manifest).encode())
    finally:
        client.close()
    b = checkout(tmp_path, "b", HOST_CHAIN)
    code, out, err = cli(*run_args(b, busybox_image, "--cache-registry", target))
    assert code == 0, out + err
    refused = [e for e in events(out) if e.get("event") == "cache entry refused"]
    assert len(refused) == 1 and "does not match its digest" in refused[0]["reason"], out
    assert finished(out, "s0")["status"] == "succeeded"
    assert [finished(out, s)["status"] for s in ("s1", "s2")] == ["cached"] * 2
    assert (b / "out" / "s0.txt").read_text() == "s0 payload-from-src\n"


def test_the_listing_is_trusted_for_a_while_and_a_refused_listing_asks_key_by_key(
    open_registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry pushed after a run's listing is not seen by that run while the listing is fresh,
    and is once it is older than LISTING_TTL (asked by its tag); a registry that refuses to list
    tags (ECR without ecr:ListImages) is asked key by key."""
    from pipekit._history import remote
    from pipekit._history.oci import OciClient
    from pipekit.exceptions import RegistryAuthError

    target = f"{open_registry.address}/team/ttl"
    writer = remote.RegistryCache(target, "readwrite")
    first, later = "a" * 64, "b" * 64
    writer.push(remote.Entry(key=first, pipeline="p", stage="s", run_id="r1", output_json='"one"'))
    reader = remote.RegistryCache(target, "read")
    reader.prepare("p")
    assert reader.fetch(first, "s") is not None
    writer.push(remote.Entry(key=later, pipeline="p", stage="s", run_id="r2", output_json='"two"'))
    assert reader.fetch(later, "s") is None  # not in the listing the run took
    monkeypatch.setattr(remote, "LISTING_TTL", 0.0)
    found = reader.fetch(later, "s")
    assert found is not None and found.output_json == '"two"'  # the listing is old: asked by its tag

    def refused(self: Any, pages: Any) -> None:
        raise RegistryAuthError("refused", registry=open_registry.address, reference=target)

    monkeypatch.setattr(remote, "LISTING_TTL", 60.0)
    monkeypatch.setattr(OciClient, "tags_within", refused)
    blind = remote.RegistryCache(target, "read")
    blind.prepare("p")
    found = blind.fetch(later, "s")
    assert found is not None and found.run_id == "r2" and blind.fetch("c" * 64, "s") is None
    for cache in (writer, reader, blind):
        cache.close()


def test_an_index_keeps_the_stages_a_run_did_not_touch(open_registry: Any) -> None:
    """A run of some stages only (a target) updates their index entries and keeps the others'."""
    from pipekit._history import remote

    target = f"{open_registry.address}/team/index"
    k0, k1, k1_new = "0" * 64, "1" * 64, "2" * 64

    def writing_run(entries: dict[str, str], hits: dict[str, str] | None = None) -> bool:
        cache = remote.RegistryCache(target, "readwrite")
        cache.prepare("p")
        for stage, key in entries.items():
            cache.push(remote.Entry(key=key, pipeline="p", stage=stage, run_id="r", output_json='"x"'))
        for stage, key in (hits or {}).items():
            assert cache.fetch(key, stage) is not None
        try:
            return cache.push_index()
        finally:
            cache.close()

    assert writing_run({"s0": k0, "s1": k1})
    assert writing_run({"s1": k1_new})  # a run of s1 only
    assert not writing_run({}, {"s0": k0, "s1": k1_new})  # all hits: nothing changed, not written again
    reader = remote.RegistryCache(target, "read")
    reader.prepare("p")
    listing = reader._listed_now()
    assert listing is not None and set(listing.manifests) == {k0, k1_new}
    assert reader.fetch(k0, "s0") is not None and reader.fetch(k1, "s1") is not None  # the old one: by its tag
    reader.close()
