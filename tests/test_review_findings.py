"""Findings of the review of the code that landed in the last session (notes: /work/notes/review.md):
each test shows a bug that is still there, marked ``xfail(strict=True)`` so that the suite stays
green and that the fix makes it fail loudly (XPASS) until the mark is dropped.

The hostile registries here are small HTTP servers of the test's own (a real Distribution
registry never answers like this; a compromised one, or a proxy in the way, can).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent


# -- a hostile registry ----------------------------------------------------------------------------
class _Hostile:
    """An HTTP server on 127.0.0.1 whose answers ``answer(handler)`` gives; it notes each request
    (method, path, Authorization header) and how many body bytes it managed to send."""

    def __init__(self, answer: Callable[[Any], None]) -> None:
        owner = self
        self.requests: list[tuple[str, str, str | None]] = []
        self.sent = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                owner.requests.append((self.command, self.path, self.headers.get("Authorization")))
                try:
                    answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_HEAD = do_PUT = do_POST = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def send(self, handler: Any, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            handler.send_header(k, v)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
            self.sent += len(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[[Any], None]], _Hostile]]:
    made: list[_Hostile] = []

    def make(answer: Callable[[Any], None]) -> _Hostile:
        made.append(_Hostile(answer))
        return made[-1]

    yield make
    for h in made:
        h.close()


# -- 2. the registry client (pipekit/_history/oci.py) -----------------------------------------------
def test_an_error_answer_of_a_hostile_registry_is_not_read_whole(hostile: Any) -> None:
    from pipekit._history.oci import OciClient
    from pipekit.exceptions import RegistryError

    big = 64 << 20

    def answer(h: Any) -> None:  # a 500 whose text never ends (64 MiB here), sent in 1 MiB pieces
        h.send_response(500)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(big))
        h.end_headers()
        chunk = b"x" * (1 << 20)
        for _ in range(big // len(chunk)):
            h.wfile.write(chunk)
            server.sent += len(chunk)

    server = hostile(answer)
    client = OciClient(f"127.0.0.1:{server.port}/cache", timeout=(2.0, 5.0))
    with pytest.raises(RegistryError) as e:
        client.blob("sha256:" + "0" * 64, 10)
    assert len(str(e.value)) < 1000
    assert server.sent < 16 << 20, f"the client read {server.sent >> 20} MiB of an error answer"


def test_the_registry_login_never_goes_to_the_host_a_link_header_names(hostile: Any) -> None:
    from pipekit._history.oci import OciClient

    def elsewhere_answer(h: Any) -> None:
        other.send(h, 200, json.dumps({"tags": ["pk1-b"]}).encode(), {"Content-Type": "application/json"})

    other = hostile(elsewhere_answer)

    def answer(h: Any) -> None:
        if h.headers.get("Authorization") is None:
            registry.send(h, 401, b"{}", {"WWW-Authenticate": 'Basic realm="r"', "Content-Type": "application/json"})
            return
        link = f'<http://127.0.0.1:{other.port}/v2/cache/tags/list?last=a>; rel="next"'
        registry.send(h, 200, json.dumps({"tags": ["pk1-a"]}).encode(), {"Link": link})

    registry = hostile(answer)
    client = OciClient(f"127.0.0.1:{registry.port}/cache", auth=("ci", "s3cret-password"), timeout=(2.0, 5.0))
    try:
        client.tags()
    except Exception:
        pass  # refusing the foreign link is a fix too
    assert [auth for _, _, auth in other.requests if auth] == [], "the registry's login went to another host"


def test_a_tag_list_that_links_to_itself_ends(hostile: Any) -> None:
    from pipekit._history.oci import OciClient

    def answer(h: Any) -> None:
        registry.send(h, 200, json.dumps({"tags": ["pk1-a"]}).encode(), {"Link": '</v2/cache/tags/list>; rel="next"'})

    registry = hostile(answer)
    client = OciClient(f"127.0.0.1:{registry.port}/cache", timeout=(2.0, 5.0))
    done = threading.Event()

    def list_tags() -> None:
        try:
            client.tags()
        except Exception:
            pass
        done.set()

    threading.Thread(target=list_tags, daemon=True).start()
    ended = done.wait(10)
    registry.close()  # (the loop, if it still runs, ends on a refused connection)
    assert ended, f"tags() still asks after {len(registry.requests)} pages of the same list"


def test_an_upload_location_on_another_host_is_refused_without_sending_the_login(hostile: Any) -> None:
    from pipekit._history.oci import OciClient
    from pipekit.exceptions import RegistryError

    other = hostile(lambda h: other.send(h, 201, b""))

    def answer(h: Any) -> None:
        if h.headers.get("Authorization") is None:
            registry.send(h, 401, b"{}", {"WWW-Authenticate": 'Basic realm="r"', "Content-Type": "application/json"})
        elif h.command == "HEAD":
            registry.send(h, 404, b"")
        else:  # the upload "goes on" at another host
            registry.send(h, 202, b"", {"Location": f"http://127.0.0.1:{other.port}/v2/cache/blobs/uploads/u1"})

    registry = hostile(answer)
    client = OciClient(f"127.0.0.1:{registry.port}/cache", auth=("ci", "s3cret-password"), timeout=(2.0, 5.0))
    with pytest.raises(RegistryError, match="another host") as e:
        client.put_blob(b"payload")
    assert other.requests == [] and "s3cret" not in str(e.value)


def test_a_token_answer_or_a_tag_page_that_never_ends_is_not_read_whole(hostile: Any) -> None:
    from pipekit._history.oci import OciClient
    from pipekit.exceptions import RegistryError

    big = 64 << 20

    def endless(server_of: Callable[[], Any], status: int) -> Callable[[Any], None]:
        def answer(h: Any) -> None:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(big))
            h.end_headers()
            h.wfile.write(b'{"token": "')
            for _ in range(big >> 20):
                h.wfile.write(b"x" * (1 << 20))
                server_of().sent += 1 << 20

        return answer

    tokens = hostile(endless(lambda: tokens, 200))

    def answer(h: Any) -> None:
        realm = f'Bearer realm="http://127.0.0.1:{tokens.port}/token",service="r"'
        registry.send(h, 401, b"{}", {"WWW-Authenticate": realm, "Content-Type": "application/json"})

    registry = hostile(answer)
    client = OciClient(f"127.0.0.1:{registry.port}/cache", auth=("ci", "pw"), timeout=(2.0, 5.0))
    with pytest.raises(RegistryError):
        client.tags()
    assert tokens.sent < 16 << 20, f"the client read {tokens.sent >> 20} MiB of a token answer"

    pages = hostile(endless(lambda: pages, 200))
    client = OciClient(f"127.0.0.1:{pages.port}/cache", timeout=(2.0, 5.0))
    with pytest.raises(RegistryError, match="tag list is not one"):
        client.tags()
    assert pages.sent < 24 << 20, f"the client read {pages.sent >> 20} MiB of one page of tags"


def test_a_blob_sent_a_byte_at_a_time_ends_at_its_deadline(hostile: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 2h: each read is bounded by the read timeout; the whole download by a deadline too."""
    import time

    from pipekit._history import oci
    from pipekit.exceptions import RegistryUnavailable

    monkeypatch.setattr(oci, "MIN_DEADLINE", 1.0)

    def answer(h: Any) -> None:  # 100 bytes, one every 0.2 s (each read gets a byte well within its timeout)
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        for _ in range(100):
            h.wfile.write(b"x")
            h.wfile.flush()
            registry.sent += 1
            time.sleep(0.2)

    registry = hostile(answer)
    client = oci.OciClient(f"127.0.0.1:{registry.port}/cache", timeout=(2.0, 5.0))
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="too slowly"):
        client.blob("sha256:" + "0" * 64, 100)
    assert time.monotonic() - started < 8 and registry.sent < 60


def test_an_entry_larger_than_the_cap_is_refused_before_a_blob_is_read(hostile: Any) -> None:
    """Review 2g: an entry's blobs are held in memory while checked: a total cap (and one on their number)."""
    import base64
    import hashlib

    from pipekit._history.remote import CONFIG_TYPE, MAX_ENTRY, RegistryCache, Tampered

    config = b"{}"
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    layer = {"mediaType": "application/octet-stream", "digest": "sha256:" + "5" * 64, "size": MAX_ENTRY // 2 + 1}
    manifest = {
        "config": {"mediaType": CONFIG_TYPE, "digest": digest, "size": 2, "data": base64.b64encode(config).decode()},
        "layers": [layer, layer],
    }

    def answer(h: Any) -> None:
        registry.send(h, 200, json.dumps(manifest).encode(), {"Content-Type": "application/json"})

    registry = hostile(answer)
    cache = RegistryCache(f"127.0.0.1:{registry.port}/cache", "read")
    with pytest.raises(Tampered, match="more than an entry may hold"):
        cache.fetch("a" * 64, "build")
    cache.close()
    assert [path for _, path, _ in registry.requests if "/blobs/" in path] == []


def test_only_a_loopback_address_gets_plain_http() -> None:
    from pipekit._history.oci import parse_target

    assert parse_target("127.0.0.1:5000/cache")[0] == "http://127.0.0.1:5000"
    assert parse_target("127.example.com/cache")[0] == "https://127.example.com"


def test_cache_list_of_a_registry_with_a_broken_entry_says_so_without_a_traceback(hostile: Any, tmp_path: Path) -> None:
    from helpers import run_console

    def answer(h: Any) -> None:
        if "/tags/list" in h.path:
            registry.send(
                h,
                200,
                json.dumps({"tags": ["pk1-" + "a" * 64, "pk1-" + "b" * 64]}).encode(),
                {"Content-Type": "application/json"},
            )
        elif "pk1-bbb" in h.path:  # a sound entry after the broken one
            good = {"annotations": {"dev.pipekit.stage": "build-ok"}, "config": {"size": 3}}
            registry.send(h, 200, json.dumps(good).encode(), {"Content-Type": MANIFEST})
        else:
            registry.send(h, 200, b"<html>not a manifest</html>", {"Content-Type": MANIFEST})

    MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    registry = hostile(answer)
    (tmp_path / "pipeline.py").write_text("import pipekit as pk\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = run_console(
        ["cache", "list", "--remote", "--cache-registry", f"127.0.0.1:{registry.port}/cache"], cwd=tmp_path, env=env
    )
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode in (1, 2, 3), (done.returncode, done.stderr[-500:])
    assert "unreadable: its manifest is not JSON" in done.stdout, done.stdout  # said, and the listing went on
    assert "build-ok" in done.stdout, done.stdout


# -- 2. the shared cache in a run (pipekit/_run/sharedcache.py) -------------------------------------
def test_a_cache_hit_never_sends_the_cache_login_to_another_registry() -> None:
    from types import SimpleNamespace

    from pipekit._history.remote import RegistryCache
    from pipekit._run.sharedcache import SharedCache
    from pipekit.backend import Image

    pulls: list[tuple[str, Any]] = []

    class Engine:  # the images of the run: none is here, every pull is noted (and fails)
        def image_problem(self, ref: str) -> str | None:
            return "not here"

        def pull(self, origin: Any, ref: str, auth: Any, on_line: Any) -> Image:
            from pipekit.exceptions import RegistryError

            pulls.append((ref, auth))
            raise RegistryError("not pulled in this test", registry="x", reference=ref)

    cache = RegistryCache("127.0.0.1:5999/team/cache", "read")
    shared = SharedCache(cache, auth=("ci", "s3cret-password"))
    run = SimpleNamespace(images=Engine(), run_id="r1")
    stage = SimpleNamespace(stage=SimpleNamespace(name="build"))
    planted = Image(id="sha256:" + "1" * 64, tags=(), remote="evil.example.com/x@sha256:" + "2" * 64)
    warned: list[Any] = []
    log = SimpleNamespace(warning=lambda *a, **k: warned.append(k), info=lambda *a, **k: None)
    assert shared._pull_images(run, stage, planted, log) == planted.id  # type: ignore[arg-type]
    assert [(ref, auth) for ref, auth in pulls if auth is not None] == [], "the cache's login went to evil.example.com"
    assert pulls == [] and "evil.example.com" in warned[0]["reason"], warned
    # an image of the cache's own repository, by digest, is pulled with the login (what pipekit pushes)
    own = Image(id="sha256:" + "1" * 64, tags=(), remote="127.0.0.1:5999/team/cache@sha256:" + "3" * 64)
    shared._pull_images(run, stage, own, log)  # type: ignore[arg-type]
    cache.close()
    assert [ref for ref, auth in pulls if auth and auth["password"] == "s3cret-password"] == [own.remote]
    # ... but not by tag, nor from another repository of the same registry
    for remote in ["127.0.0.1:5999/team/cache:latest", "127.0.0.1:5999/team/other@sha256:" + "3" * 64]:
        planted = Image(id="sha256:" + "1" * 64, tags=(), remote=remote)
        assert shared._pull_images(run, stage, planted, log) == planted.id  # type: ignore[arg-type]
    assert len(pulls) == 1


def test_an_unexpected_error_while_restoring_a_hit_is_a_miss_not_an_escaping_exception() -> None:
    """An exception out of SharedCache.restore leaves the stages prepared after it waiting for ever
    (seen: a run hung in its cleanup); whatever goes wrong with a hit is a miss and a warning."""
    from types import SimpleNamespace

    from pipekit._history.remote import Entry, RegistryCache
    from pipekit._run.outputs import Taken
    from pipekit._run.serialize import dumps
    from pipekit._run.sharedcache import SharedCache
    from pipekit.backend import Image

    class Engine:  # an engine whose client fails in a way pipekit did not foresee
        def image_problem(self, ref: str) -> str | None:
            raise RuntimeError("the engine's client broke")

    image = Image(id="sha256:" + "1" * 64, tags=(), remote="127.0.0.1:5999/team/cache@sha256:" + "3" * 64)
    cache = RegistryCache("127.0.0.1:5999/team/cache", "read")
    entry = Entry(key="k" * 64, pipeline="p", stage="build", run_id="r0", output_json=dumps({"image": image}))
    cache.fetch = lambda key, stage: entry  # type: ignore[method-assign]
    shared = SharedCache(cache, auth=None)
    warned: list[Any] = []
    log = SimpleNamespace(warning=lambda *a, **k: warned.append(k), info=lambda *a, **k: None)
    run = SimpleNamespace(images=Engine(), run_id="r1")
    taken = Taken(None, "cache miss", key="k" * 64)
    got = shared.restore(run, SimpleNamespace(stage=SimpleNamespace(name="build", cache=None)), taken, log)  # type: ignore[arg-type]
    cache.close()
    assert got is taken and "RuntimeError: the engine's client broke" in warned[-1]["reason"], warned


# -- 3. the workspace by difference (pipekit/_workspace/sync.py, hosttree.py) ------------------------
REPLACE = """
@pk.stage(image="busybox")
def flatten(ctx):
    ctx.sh("rm -rf config && {how} config")
"""
#: a stage that makes the folder a file, or a link (to a folder it was given)
SHAPES = {"file": "echo now-a-file >", "link": "ln -s docs"}


def _replacing(tmp_path: Path, how: str) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "pipeline.py").write_text("import pipekit as pk\n\n" + textwrap.dedent(REPLACE.format(how=SHAPES[how])))
    (folder / "docs").mkdir()
    (folder / "docs" / "index.md").write_text("docs\n")
    (folder / "config").mkdir()
    (folder / "config" / "ci.env").write_text("TOKEN=do-not-lose-me\n")
    (folder / "config" / "settings.txt").write_text("shipped\n")
    (folder / "pyproject.toml").write_text('[tool.pipekit]\nsecrets-file = "config/ci.env"\n')
    return folder


def _kept(folder: Path, shipped_too: bool = True) -> None:
    """The folder is still there with the secrets file in it, and what pipekit shipped unless the stage's
    deletions came first (a link is made once every file is in place: by then its shipped names are gone,
    which is what the stage did)."""
    assert (folder / "config").is_dir() and not (folder / "config").is_symlink()
    assert (folder / "config" / "ci.env").read_text() == "TOKEN=do-not-lose-me\n", "the secrets file is gone"
    assert (folder / "config" / "settings.txt").exists() == shipped_too


@pytest.mark.docker
@pytest.mark.parametrize("how", sorted(SHAPES))
def test_a_file_in_place_of_a_folder_never_deletes_the_secrets_file_in_it(
    tmp_path: Path, busybox_image: str, how: str
) -> None:
    """By difference (the base copy on the engine), as users run it: the stage fails naming the path."""
    folder = _replacing(tmp_path, how)
    exe = shutil.which("pipekit")
    assert exe is not None
    argv = [exe, "run", "--progress", "plain", "--workspace", "copy", "--image-map", f"busybox={busybox_image}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    _kept(folder, shipped_too=how == "file")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-2000:]
    assert "config/ci.env would be deleted: the stage made config a file or a link" in out, out[-2000:]
    assert "Move config/ci.env out of config" in out and "Traceback" not in out and "do-not-lose-me" not in out


@pytest.mark.docker
def test_a_file_in_place_of_a_folder_in_a_whole_copy_deletes_only_what_was_shipped(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    """The whole copy (an engine whose overlays do not mount) goes through the same code: the secrets
    file stops it; a folder that holds only what pipekit shipped becomes the stage's file."""
    import pipekit as pk
    from pipekit._backends.docker.backend import DockerBackend

    folder = _replacing(tmp_path, "file")
    (folder / "pipeline.py").write_text(
        (folder / "pipeline.py").read_text() + '\n\n@pk.stage(image="busybox")\ndef other(ctx):\n'
        '    ctx.sh("rm -rf shipped-only && echo a-file > shipped-only")\n'
    )
    (folder / "shipped-only" / "sub").mkdir(parents=True)
    (folder / "shipped-only" / "sub" / "f").write_text("f\n")
    backend = DockerBackend(docker_client, workspace="copy")
    backend.layers.works = False
    secrets = str(folder / "config" / "ci.env")  # (the console script reads it from pyproject.toml)
    result = pk.run(
        str(folder / "pipeline.py"), backend=backend, image_map={"busybox": busybox_image}, secrets_file=secrets
    )
    _kept(folder)
    statuses = {n: s.status for n, s in result.stages.items()}
    assert statuses == {"flatten": "failed", "other": "succeeded"}, result.stages
    assert (folder / "shipped-only").read_text() == "a-file\n"


# -- 4. approvals on the command line (pipekit/_run/gates.py) ---------------------------------------
def test_the_approver_is_the_account_that_runs_the_command_not_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    from pipekit._run.gates import current_user

    me = pwd.getpwuid(os.geteuid()).pw_name
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "alice-the-approver")
    assert current_user() == me


def test_resume_with_approve_does_not_open_a_gate_past_its_timeout(tmp_path: Path) -> None:
    import time

    from helpers import run_console
    from test_approvals import gated

    gated(tmp_path, timeout="1s")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert run_console(["run", "--progress", "plain"], cwd=tmp_path, env=env).returncode == 4
    time.sleep(1.2)  # `pipekit approve` is refused from now on ("timed out"); so should this be:
    late = ["run", "--resume", "--progress", "plain", "--approve", "deploy", "--approval-param", "deploy.reason=late"]
    resumed = run_console(late, cwd=tmp_path, env=env)
    assert "deploying" not in resumed.stdout, resumed.stdout[-1500:]
    assert resumed.returncode in (1, 2)
    assert (
        "timed out (approval timed out after 1s); resuming the run fails the stage" in resumed.stdout + resumed.stderr
    )
