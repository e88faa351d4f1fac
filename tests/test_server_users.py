"""`pipekit serve` with named users: each has a token of their own (from a variable, or as its
SHA-256), the API and the logins know who is asking, and each run records who triggered it. A real
server process, a real git remote, the Docker engine, Chromium."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import HOOK_SECRET, TOKEN, Remote, Server
from test_server import PROJECT, pipeline

pytestmark = pytest.mark.docker

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
USERS = f"""
[users.alice]
token_env = "ALICE_TOKEN"
groups = ["ops"]

[users.bob]
token_sha256 = "{hashlib.sha256(BOB.encode()).hexdigest()}"
"""


@pytest.fixture
def users_server(tmp_path: Path, busybox_image: str) -> Iterator[tuple[Server, Remote]]:
    remote = Remote(tmp_path)
    remote.push({"pipeline.py": pipeline(), "version.txt": "v1\n"}, message="first")
    srv = Server(tmp_path, PROJECT, USERS)
    srv.extra_env["ALICE_TOKEN"] = ALICE
    yield srv.start(busybox_image), remote
    if srv.proc is not None:
        srv.stop()


def log_in(srv: Server, token: str) -> str:
    """``POST /login`` with ``token``: the session cookie (``pipekit_session=...``)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    conn.request("POST", "/login", body=f"token={token}&next=/", headers=form)
    response = conn.getresponse()
    response.read()
    conn.close()
    return str(response.getheader("set-cookie", "")).split(";")[0]


def csrf_of(srv: Server, cookie: str, page: str = "/") -> str:
    status, text = srv.request("GET", page, headers={"Cookie": cookie})
    assert status == 200
    found = re.search(r'data-csrf="([0-9a-f]+)"', text)
    assert found, text
    return found.group(1)


def test_each_user_has_a_token_and_runs_record_who_triggered_them(users_server: Any, busybox_image: str) -> None:
    srv, remote = users_server
    assert srv.api("GET", "/api/me", token=ALICE) == {"user": "alice", "groups": ["ops"]}
    assert srv.api("GET", "/api/me", token=BOB) == {"user": "bob", "groups": []}
    assert srv.api("GET", "/api/me", token=TOKEN) == {"user": "admin", "groups": []}  # the shared token
    assert srv.request("GET", "/api/me", headers={"Authorization": "Bearer " + BOB.upper()})[0] == 401
    manual = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"]
    assert srv.wait(manual, "succeeded")["triggered_by"] == "alice"
    pushed = srv.github_hook("main", remote.push({"version.txt": "v2\n"}))[1]["run"]
    assert srv.wait(pushed, "succeeded")["triggered_by"] == "webhook:github"  # a push is the webhook's
    # bob logs in with his token: the session is his, and a form he posts (with its CSRF token) is his
    bob = log_in(srv, BOB)
    assert bob.startswith("pipekit_session=")
    assert srv.request("GET", "/api/me", headers={"Cookie": bob})[1]["user"] == "bob"
    assert '<span id="user">bob</span>' in srv.request("GET", f"/runs/{manual}", headers={"Cookie": bob})[1]
    form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": bob}
    assert srv.request("POST", f"/api/runs/{manual}/rerun", b"csrf=forged", form)[0] == 401
    csrf = csrf_of(srv, bob, f"/runs/{manual}")
    assert srv.request("POST", f"/api/runs/{manual}/rerun", f"csrf={csrf}".encode(), form)[0] in (200, 303)
    rerun = max(r["id"] for r in srv.runs())
    assert srv.wait(rerun, "succeeded")["triggered_by"] == "bob"
    again = srv.api("POST", f"/api/runs/{manual}/rerun", token=TOKEN)["run"]
    assert srv.wait(again, "succeeded")["triggered_by"] == "admin"
    alice = log_in(srv, ALICE)
    assert "run 1 queued: app main" in srv.log.read_text() and "by alice" in srv.log.read_text()
    # no token is in the server's log, its database or its answers
    srv.stop()
    stored = b"".join(p.read_bytes() for p in (srv.root / "state").glob("server.db*"))
    for secret in (ALICE, BOB, TOKEN, HOOK_SECRET):
        assert secret.encode() not in stored and secret not in srv.log.read_text()
    # restarted with a new token for alice and no shared token: bob's login lives on, alice's ends
    srv.extra_env.update(ALICE_TOKEN="alice-new-token-0123456789", PIPEKIT_SERVER_TOKEN="")
    srv.start(busybox_image)
    assert srv.request("GET", "/api/me", headers={"Cookie": bob})[1]["user"] == "bob"
    assert srv.request("GET", "/api/me", headers={"Cookie": alice})[0] == 401
    assert srv.request("GET", "/api/me", headers={"Authorization": f"Bearer {ALICE}"})[0] == 401
    assert srv.request("GET", "/api/me", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 401  # no admin now
    assert srv.api("GET", "/api/me", token="alice-new-token-0123456789")["user"] == "alice"
    runs = srv.api("GET", "/api/runs", token=BOB)
    assert [r["triggered_by"] for r in runs] == ["admin", "bob", "webhook:github", "alice"]


def test_the_web_view_shows_who_is_logged_in_and_a_re_run_is_theirs(users_server: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from test_server import _until

    srv, _ = users_server
    run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"]
    srv.wait(run, "succeeded")
    browser.delete_all_cookies()
    browser.get("about:blank")
    browser.get_log("browser")  # the shared browser's earlier pages (other tests' servers, gone) are not this test's
    browser.get(f"{srv.url}/runs/{run}")
    browser.find_element(By.NAME, "token").send_keys(BOB)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    assert _until(lambda: browser.find_element(By.ID, "user").text) == "bob"
    assert _until(lambda: "manual by alice" in browser.find_element(By.ID, "facts").text)
    browser.find_element(By.ID, "rerun").click()
    _until(lambda: browser.current_url.rstrip("/") != f"{srv.url}/runs/{run}")
    new = int(browser.current_url.rstrip("/").rsplit("/", 1)[1])
    assert srv.wait(new, "succeeded", "failed")["triggered_by"] == "bob"
    assert _until(lambda: "rerun by bob" in browser.find_element(By.ID, "facts").text)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_bad_users_in_the_configuration_exit_2_saying_what_to_fix(tmp_path: Path) -> None:
    def serve(config: str, **env: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "s.toml").write_text(config)
        return subprocess.run(
            [sys.executable, "-m", "pipekit", "serve", "--config", str(tmp_path / "s.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PIPEKIT_SERVER_TOKEN": TOKEN, **env},
        )

    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    cases = [
        ('[users.alice]\ntoken_env = "A"\ntoken_sha256 = "%s"\n' % digest, {}, "needs one of token_env"),
        ("[users.alice]\ngroups = []\n", {}, "[users.alice] needs one of token_env"),
        ('[users.alice]\ntoken_env = "A"\n', {"A": "short"}, "set A to a token of 16 or more characters"),
        ('[users.alice]\ntoken_env = "A"\n', {}, "set A to a token of 16 or more characters"),
        ('[users.alice]\ntoken_sha256 = "%s"\n' % digest, {}, "admin and alice have the same token"),
        ('[users.admin]\ntoken_env = "A"\n', {"A": ALICE}, "[users.admin]: a user's name is the shared token's"),
        ('[users.alice]\ntoken_sha256 = "abc"\n', {}, "token_sha256 takes 64 hex digits"),
        ('[users.alice]\ntoken_env = "A"\nrole = "x"\n', {"A": ALICE}, "[users.alice] has no key 'role'"),
        ('[user.alice]\ntoken_env = "A"\n', {"A": ALICE}, "has no table 'user'"),
        ('[users.alice]\ntoken_env = "A"\ngroups = "ops"\n', {"A": ALICE}, "groups takes a list"),
    ]
    for config, env, message in cases:
        proc = serve(config, **env)
        assert proc.returncode == 2, (config, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (config, proc.stderr)
        assert ALICE not in proc.stderr and TOKEN not in proc.stderr
