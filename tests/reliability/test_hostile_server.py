"""Threat model, server mode: what a stage, a pipeline.py or an unauthenticated client does to
`pipekit serve`. A real server process (tests/server_helpers.py), a real bare git remote and real
pushes, the real engine for container stages."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import HOOK_SECRET, STATUS_TOKEN, TOKEN, Remote, Server, git

SECRETS = (TOKEN, HOOK_SECRET, STATUS_TOKEN)
PROJECT = """name = "app"
repo = "remote.git"
branches = ["main"]
webhook_secret_env = "APP_HOOK_SECRET"
status_token_env = "APP_STATUS_TOKEN"
status_api = "http://127.0.0.1:9/"
"""
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def make_server(tmp_path: Path, busybox_image: str) -> Iterator[Any]:
    started: list[Server] = []

    def make(files: dict[str, str], project: str = "", server: str = "", env: dict[str, str] | None = None) -> Any:
        remote = Remote(tmp_path)
        remote.push(files, message="first")
        srv = Server(tmp_path, PROJECT + project, server)
        srv.extra_env = env or {}
        started.append(srv.start(busybox_image))
        return srv, remote

    yield make
    for srv in started:
        if srv.proc is not None:
            srv.stop()


def _push_and_run(srv: Server, remote: Remote, files: dict[str, str], status: str = "succeeded") -> dict[str, Any]:
    sha = remote.push(files)
    code, answer = srv.github_hook("main", sha)
    assert code == 202, answer
    return srv.wait(answer["run"], status, timeout=180)


# -- item 1: a hook a stage plants never runs on the server ------------------------------------

PLANT = """#!/bin/sh
# $1: the marker (outside the workspace), $2: the workspace's path on the host
mkdir -p .git/hooks .git/evil || exit 0
printf '#!/bin/sh\\nenv > %s\\n' "$1" > .git/evil/hook || exit 0
chmod +x .git/evil/hook
for h in post-checkout pre-commit post-merge post-rewrite reference-transaction pre-auto-gc post-index-change; do
  cp .git/evil/hook .git/hooks/$h; cp .git/evil/hook .git/evil/$h
done
printf '[core]\\n\\thooksPath = %s/.git/evil\\n\\tfsmonitor = %s/.git/evil/hook\\n' "$2" "$2" >> .git/config
echo planted
"""

HOOK_PIPELINE = """from pathlib import Path

import pipekit as pk

MARKER = {marker!r}
WS = str(Path(__file__).resolve().parent)
pipeline = pk.Pipeline(name="app")


@pipeline.stage(image="busybox")
def plant(ctx):
    ctx.sh(f"sh plant.sh {{MARKER}} {{WS}}", check=False)


@pipeline.stage(needs=[plant])
def plant_on_host(ctx):
    ctx.sh(f"sh plant.sh {{MARKER}} {{WS}}")


@pipeline.stage(needs=[plant_on_host])
def commit_on_host(ctx):  # a release stage's commit: git in the run has hooks and fsmonitor off too
    ctx.sh("git -c user.name=t -c user.email=t@t commit -q --allow-empty -m bump && git status --short")
"""


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["mount", "copy"])
def test_a_hook_or_git_config_a_stage_plants_never_runs_at_the_next_checkout(
    make_server: Any, tmp_path: Path, mode: str
) -> None:
    marker = tmp_path / "hook-ran"
    files = {"pipeline.py": HOOK_PIPELINE.format(marker=str(marker)), "plant.sh": PLANT, "v.txt": "1"}
    srv, remote = make_server(files, project=f'args = ["--workspace", "{mode}"]\n')
    _push_and_run(srv, remote, {"v.txt": "2"})
    dotgit = tmp_path / "state" / "projects" / "app" / "ws-0" / ".git"
    assert (dotgit / "hooks" / "post-checkout").exists() and "hooksPath" in (dotgit / "config").read_text()
    # the next run checks out in that workspace: none of the planted hooks, hooksPath or fsmonitor runs
    _push_and_run(srv, remote, {"v.txt": "3"})
    srv.api("POST", "/api/projects/app/runs", {"branch": "main"})
    assert srv.wait(srv.runs()[0]["id"], "succeeded", timeout=180)
    assert not marker.exists(), marker.read_text()


# -- item 7: no server secret reaches pipeline code --------------------------------------------

SPY_PIPELINE = """import json
import os
from pathlib import Path

import pipekit as pk

OUT = Path({out!r})


def dump(tag, data):
    (OUT / f"{{tag}}-{{os.getpid()}}.json").write_text(json.dumps(data))


dump("import", dict(os.environ))
pipeline = pk.Pipeline(name="app")


@pipeline.stage
def spy(ctx):
    ancestors, pid = [], os.getpid()
    while pid > 1:
        try:
            ancestors.append(Path(f"/proc/{{pid}}/environ").read_bytes().decode("utf-8", "replace"))
        except OSError as e:
            ancestors.append(f"unreadable: {{e}}")
        pid = int(Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()[1])
    dump("stage", {{"env": dict(os.environ), "ancestors": ancestors}})
    ctx.sh("env > " + str(OUT / "sh-env.txt"))
"""


def test_pipeline_code_sees_no_server_secret_at_import_in_a_host_stage_or_in_proc(
    make_server: Any, tmp_path: Path
) -> None:
    out = tmp_path / "spied"
    out.mkdir()
    env = {"APP_DEPLOY_KEY": "deploy-key-of-app-1234", "SERVER_ONLY_VAR": "not-for-pipelines"}
    srv, remote = make_server(
        {"pipeline.py": SPY_PIPELINE.format(out=str(out))}, project='pass_env = ["APP_DEPLOY_KEY"]\n', env=env
    )
    own = Path(f"/proc/{srv.proc.pid}/environ").read_bytes().decode("utf-8", "replace")
    assert not [s for s in SECRETS if s in own] and "deploy-key-of-app" not in own  # re-executed without them
    assert "SERVER_ONLY_VAR" in own  # the rest of its environment is its own
    _push_and_run(srv, remote, {"v.txt": "2"})
    imports = [json.loads(p.read_text()) for p in out.glob("import-*.json")]
    assert len(imports) >= 2  # the triggers probe and the run both imported pipeline.py
    [stage] = [json.loads(p.read_text()) for p in out.glob("stage-*.json")]
    everything = json.dumps([imports, stage]) + (out / "sh-env.txt").read_text()
    assert [s for s in SECRETS if s in everything] == []
    assert "APP_HOOK_SECRET" not in everything and "PIPEKIT_SERVER_TOKEN" not in everything
    own_env = json.dumps([imports, stage["env"]]) + (out / "sh-env.txt").read_text()
    assert "SERVER_ONLY_VAR" not in own_env  # an allow-list, not a deny-list
    assert stage["env"]["APP_DEPLOY_KEY"] == "deploy-key-of-app-1234"  # pass_env reaches the run
    assert all("APP_DEPLOY_KEY" not in i for i in imports if "PIPEKIT_SERVER_RUN" not in i)  # not the probe
    assert len(stage["ancestors"]) >= 3  # the stage, pipekit run, the server (and what started it)


HOST_PIPELINE = """from pathlib import Path

import pipekit as pk

pipeline = pk.Pipeline(name="app")


@pipeline.stage(image="busybox")
def build(ctx):
    ctx.sh("echo built")


@pipeline.stage(needs=[build])
def deploy(ctx):
    Path({marker!r}).write_text("ran on the host")
"""


def test_host_stages_false_refuses_a_pipeline_with_a_host_stage_before_anything_runs(
    make_server: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "host-stage-ran"
    srv, remote = make_server(
        {"pipeline.py": HOST_PIPELINE.format(marker=str(marker))}, project="host_stages = false\n"
    )
    run = _push_and_run(srv, remote, {"v.txt": "2"}, status="error")
    assert "host_stages = false" in run["error"] and "deploy has no image" in run["error"], run
    assert "Traceback" not in run["error"] and run["stages"] == []
    assert not marker.exists()


# -- item 8: robustness ------------------------------------------------------------------------

PRINTING = """import sys

import pipekit as pk

print("hello from pipeline.py", {{"not": "json"}})
sys.stdout.write("{{ broken")
pipeline = pk.Pipeline(name="app")


@pipeline.stage
def work(ctx):
    ctx.sh("echo {word}")
"""


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_oversized_bodies_are_refused_before_they_are_read(make_server: Any) -> None:
    srv, _ = make_server({"pipeline.py": PRINTING.format(word="x")}, server='max_webhook_body = "4KiB"')
    before = _rss(srv.proc.pid)
    started = time.monotonic()
    form = [("Content-Type", b"application/x-www-form-urlencoded"), ("Content-Length", str(54 * 10**6).encode())]
    status, _, body = srv.raw("POST", "/login", form, b"token=" + b"a" * 100_000)
    assert status == 413 and b"larger than" in body
    # no Content-Length, a body that only turns out too long while it is read
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [b"token=" + b"b" * 40_000] * 3) + b"0\r\n\r\n"
    chunked = [("Content-Type", b"application/x-www-form-urlencoded"), ("Transfer-Encoding", b"chunked")]
    assert srv.raw("POST", "/login", chunked, chunks)[0] == 413
    hook = [("Content-Type", b"application/json"), ("X-GitHub-Event", b"push")]
    assert srv.raw("POST", "/hooks/github?project=app", hook, b"{" + b" " * 5000 + b"}")[0] == 413
    assert srv.raw("POST", "/hooks/github?project=app", hook, b"{}")[0] == 401  # under the cap: read, checked
    assert time.monotonic() - started < 10 and _rss(srv.proc.pid) - before < 50 * 2**20
    assert srv.api("GET", "/api/runs") == []


def test_a_pipeline_that_prints_at_import_still_runs_and_a_failed_probe_is_a_recorded_run(make_server: Any) -> None:
    srv, remote = make_server({"pipeline.py": PRINTING.format(word="first")}, project='poll = "1s"\n')
    run = _push_and_run(srv, remote, {"pipeline.py": PRINTING.format(word="pushed")})
    assert run["trigger"] == "push"
    # polled: a printing pipeline runs, one that does not load is a run recorded with its error
    sha = remote.push({"pipeline.py": PRINTING.format(word="polled")})
    deadline = time.monotonic() + 60
    while not [r for r in srv.runs() if r["commit"] == sha and r["status"] == "succeeded"]:
        assert time.monotonic() < deadline, srv.log.read_text()[-3000:]
        time.sleep(0.3)
    broken = remote.push({"pipeline.py": "import pipekit as pk\nraise RuntimeError('no pipeline today')\n"})
    while not [r for r in srv.runs() if r["commit"] == broken]:
        assert time.monotonic() < deadline + 60, srv.log.read_text()[-3000:]
        time.sleep(0.3)
    [lost] = [r for r in srv.runs() if r["commit"] == broken]
    assert lost["trigger"] == "poll" and lost["status"] == "error" and "no pipeline today" in lost["error"], lost


def test_hostile_headers_bodies_ids_and_commits_answer_4xx_never_500(make_server: Any) -> None:
    srv, remote = make_server({"pipeline.py": PRINTING.format(word="x")})
    hook = [("Content-Type", b"application/json"), ("X-GitHub-Event", b"push")]
    push = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
    cases = [
        ("POST", "/hooks/github?project=app", [*hook, ("X-Hub-Signature-256", "sha256=é€".encode())], push, 401),
        ("POST", "/hooks/gitlab?project=app", [("X-Gitlab-Event", b"Push Hook"), ("X-Gitlab-Token", b"\xff\xfe")],
         push, 401),
        ("GET", "/api/runs", [("Cookie", "pipekit_session=é.€".encode())], b"", 401),
        ("POST", "/api/runs/1/cancel", [("Cookie", b"pipekit_session=\xe9.\xff"), ("X-CSRF-Token", b"\xe9")], b"", 401),
        ("POST", "/hooks/github?project=app", hook, b"[1, 2]", 400),
        ("POST", "/hooks/github?project=app", hook, b'"text"', 400),
        ("POST", "/hooks/github?project=app", hook, b'{"repository": [1]}', 401),
        ("GET", "/api/runs/99999999999999999999999999", [("Authorization", f"Bearer {TOKEN}".encode())], b"", 404),
        ("POST", "/api/runs/99999999999999999999999999/cancel", [("Authorization", f"Bearer {TOKEN}".encode())],
         b"", 404),
        ("GET", "/api/runs/99999999999999999999999999/log", [("Authorization", f"Bearer {TOKEN}".encode())], b"", 404),
        ("GET", "/runs/99999999999999999999999999/report", [("Authorization", f"Bearer {TOKEN}".encode())], b"", 404),
        ("GET", "/api/runs?limit=10000000000000000000000", [("Authorization", f"Bearer {TOKEN}".encode())], b"", 400),
        ("GET", "/api/runs?limit=-5", [("Authorization", f"Bearer {TOKEN}".encode())], b"", 400),
    ]  # fmt: skip
    for method, path, headers, body, expected in cases:
        status, _, answer = srv.raw(method, path, headers, body)
        assert status == expected, (method, path, headers, status, answer)
    json_bearer = [("Authorization", f"Bearer {TOKEN}".encode()), ("Content-Type", b"application/json")]
    for body in (b"[1]", b'"x"', b"{nope", b'{"params": [1]}', b'{"commit": "--upload-pack=touch /tmp/pwned"}',
                 b'{"commit": "HEAD~1"}', b'{"branch": "--help"}'):  # fmt: skip
        status, _, answer = srv.raw("POST", "/api/projects/app/runs", json_bearer, body)
        assert status == 400, (body, status, answer)
    assert srv.runs() == []
    # a signed push of a commit that is an option never reaches git
    evil = json.dumps({"ref": "refs/heads/main", "after": "--output=/tmp/pwned-by-a-hook"}).encode()
    import hashlib
    import hmac

    sig = "sha256=" + hmac.new(HOOK_SECRET.encode(), evil, hashlib.sha256).hexdigest()
    assert srv.raw("POST", "/hooks/github?project=app", [*hook, ("X-Hub-Signature-256", sig.encode())], evil)[0] == 400
    forged = json.dumps({"ref": "refs/heads/main\nrun 99 succeeded", "after": "a" * 40}).encode()
    sig = "sha256=" + hmac.new(HOOK_SECRET.encode(), forged, hashlib.sha256).hexdigest()
    assert (
        srv.raw("POST", "/hooks/github?project=app", [*hook, ("X-Hub-Signature-256", sig.encode())], forged)[0] == 400
    )
    assert srv.runs() == [] and "Traceback" not in srv.log.read_text()
    # a hex commit that is not in the repository: said at once, nothing queued
    status, _, answer = srv.raw("POST", "/api/projects/app/runs", json_bearer, b'{"commit": "abcdef1234"}')
    assert status == 404 and b"has no commit abcdef1234" in answer and srv.runs() == []
    head = git("rev-parse", "HEAD", cwd=remote.work)  # an abbreviated one is resolved to its full name
    status, _, answer = srv.raw(
        "POST", "/api/projects/app/runs", json_bearer, json.dumps({"commit": head[:9]}).encode()
    )
    assert status == 202 and srv.wait(json.loads(answer)["run"], "succeeded")["commit"] == head


def test_a_replayed_webhook_starts_no_second_run(make_server: Any) -> None:
    import hashlib
    import hmac

    srv, remote = make_server({"pipeline.py": PRINTING.format(word="x")})
    sha = remote.push({"v.txt": "2"})
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    sig = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = [
        ("Content-Type", b"application/json"),
        ("X-GitHub-Event", b"push"),
        ("X-Hub-Signature-256", sig.encode()),
    ]
    first = srv.raw("POST", "/hooks/github?project=app", [*headers, ("X-GitHub-Delivery", b"d-1")], body)
    assert first[0] == 202
    for delivery in (b"d-1", b"d-2-forged-by-the-replayer"):  # the same delivery, or the same signed body
        status, _, answer = srv.raw("POST", "/hooks/github?project=app", [*headers, ("X-GitHub-Delivery", delivery)],
                                    body)  # fmt: skip
        assert status == 200 and b"received before" in answer
    assert len(srv.runs()) == 1
    srv.wait(srv.runs()[0]["id"], "succeeded")


def test_the_session_cookie_is_secure_behind_https_expires_and_dies_at_logout(make_server: Any) -> None:
    srv, _ = make_server({"pipeline.py": PRINTING.format(word="x")}, server='session_lifetime = "2h"')
    form = [("Content-Type", b"application/x-www-form-urlencoded")]
    status, headers, _ = srv.raw("POST", "/login", [*form, ("X-Forwarded-Proto", b"https")], f"token={TOKEN}".encode())
    assert status == 303
    cookie = headers["set-cookie"]
    assert "Secure" in cookie and "Max-Age=7200" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    status, headers, _ = srv.raw("POST", "/login", form, f"token={TOKEN}".encode())
    plain = headers["set-cookie"]
    assert "Secure" not in plain and "Max-Age=7200" in plain  # over plain HTTP a Secure cookie would never return
    session = plain.split(";")[0]
    assert srv.raw("GET", "/api/runs", [("Cookie", session.encode())])[0] == 200
    assert srv.raw("POST", "/logout", [("Cookie", session.encode())])[0] == 303
    assert srv.raw("GET", "/api/runs", [("Cookie", session.encode())])[0] == 401  # dead on the server, not just unset
    assert srv.raw("POST", "/login", form, b"token=wrong-token-000000")[1].get("set-cookie") is None
    assert os.environ.get("PIPEKIT_SERVER_TOKEN") != TOKEN  # the test process never held it


def test_pipekit_triggers_output_is_apart_from_what_the_pipeline_prints_and_never_follows_a_link(
    tmp_path: Path,
) -> None:
    import shutil
    import subprocess

    (tmp_path / "pipeline.py").write_text(
        'import pipekit as pk\n\nprint("{not json")\n'
        'pipeline = pk.Pipeline(name="app", triggers=[pk.cron("0 3 * * *")])\n'
        "\n\n@pipeline.stage\ndef a(ctx):\n    pass\n"
    )
    pipekit = shutil.which("pipekit")
    assert pipekit is not None

    def triggers(output: Path) -> subprocess.CompletedProcess[str]:
        command = [pipekit, "triggers", "-f", str(tmp_path / "pipeline.py"), "--output", str(output)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    proc = triggers(tmp_path / "answer.json")
    assert proc.returncode == 0 and "{not json" in proc.stdout, proc.stderr
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert answer == {"pipeline": "app", "triggers": [{"kind": "cron", "schedule": "0 3 * * *"}]}
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "planted.json").symlink_to(victim)
    proc = triggers(tmp_path / "planted.json")
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert victim.read_text() == "keep"


def test_emptying_a_workspace_never_follows_what_a_stage_planted(tmp_path: Path) -> None:
    from pipekit._server.git import empty

    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "precious").write_text("keep")
    ws = tmp_path / "ws"
    (ws / "sub" / "nested" / ".git").mkdir(parents=True)
    (ws / "link-to-folder").symlink_to(outside)
    (ws / "sub" / "link-to-file").symlink_to(outside / "deep" / "precious")
    (ws / ".pipekit").symlink_to(outside / "deep")  # a history that is a link is not kept
    empty(ws)
    assert list(ws.iterdir()) == [] and (outside / "deep" / "precious").read_text() == "keep"
    (ws / ".pipekit").mkdir()
    (ws / ".pipekit" / "history.db").write_text("runs")
    (ws / ".git").mkdir()
    empty(ws)
    assert [p.name for p in ws.iterdir()] == [".pipekit"] and (ws / ".pipekit" / "history.db").exists()
