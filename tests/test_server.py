"""`pipekit serve` with real parts: a bare git repository as the remote and real pushes to it, signed
webhooks, the server as a process on a free port, the Docker engine, and Chromium for the pages."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import HOOK_SECRET, STATUS_TOKEN, TOKEN, Remote, Server, StatusSink

pytestmark = pytest.mark.docker

PIPELINE = """import os

import pipekit as pk

pipeline = pk.Pipeline(name="app", image="busybox", triggers=[{triggers}])
GREETING = pk.param("greeting", default="hello")


@pipeline.stage
def build(ctx):
    ctx.sh("echo building %s %s; cat version.txt" % (os.environ["PIPEKIT_TRIGGER"], os.environ["PIPEKIT_COMMIT"]))
    ctx.sh("echo token-seen=%s" % ("PIPEKIT_SERVER_TOKEN" in os.environ))


@pipeline.stage(when=pk.env("PIPEKIT_TRIGGER", "cron"))
def nightly(ctx):
    ctx.sh("echo only on a schedule")


@pipeline.stage(needs=[build])
def test(ctx):
    ctx.sh("echo " + ctx.params.greeting)
    ctx.sh("for i in $(seq 1 {lines}); do echo test line $i; sleep {pause}; done")
"""


def pipeline(triggers: str = 'pk.on_push(branches=["main", "feature/*"])', lines: int = 2, pause: float = 0.1) -> str:
    return PIPELINE.format(triggers=triggers, lines=lines, pause=pause)


PROJECT = """name = "app"
repo = "remote.git"
branches = ["main", "feature/*"]
webhook_secret_env = "APP_HOOK_SECRET"
"""


@pytest.fixture
def sink() -> Iterator[StatusSink]:
    s = StatusSink()
    yield s
    s.close()


@pytest.fixture
def make_server(tmp_path: Path, busybox_image: str) -> Iterator[Any]:
    started: list[Server] = []

    def make(extra_project: str = "", server: str = "", files: dict[str, str] | None = None) -> tuple[Server, Remote]:
        remote = Remote(tmp_path)
        remote.push(files or {"pipeline.py": pipeline(), "version.txt": "v1\n"}, message="first")
        srv = Server(tmp_path, PROJECT + extra_project, server)
        started.append(srv.start(busybox_image))
        return srv, remote

    yield make
    for srv in started:
        if srv.proc is not None:
            srv.stop()


def test_a_signed_push_runs_that_commit_and_reports_its_status(make_server: Any, sink: StatusSink) -> None:
    srv, remote = make_server()
    sha = remote.push({"version.txt": "v2\n"}, message="second")
    status, answer = srv.github_hook("main", sha)
    assert status == 202, answer
    run = srv.wait(answer["run"], "succeeded")
    assert (run["project"], run["branch"], run["commit"], run["trigger"]) == ("app", "main", sha, "push")
    assert run["duration"] > 0 and run["started"]
    statuses = [(s["name"], s["status"]) for s in run["stages"]]
    assert statuses == [("build", "succeeded"), ("nightly", "skipped"), ("test", "succeeded")]
    log = srv.request("GET", f"/api/runs/{run['id']}/log?stage=build", headers={"Authorization": f"Bearer {TOKEN}"})[1]
    assert f"building push {sha}" in log and "v2" in log  # exactly the pushed commit
    assert "token-seen=False" in log  # the server's token is not in the pipeline's environment
    [listed] = srv.runs()
    assert set(listed) >= {"id", "project", "branch", "commit", "trigger", "status", "started", "duration"}
    status, answer = srv.gitlab_hook("main", sha)
    assert status == 202 and srv.wait(answer["run"], "succeeded")["trigger"] == "push"


@pytest.mark.parametrize("forge", ["github", "gitlab"])
def test_commit_statuses_reach_github_and_gitlab(make_server: Any, sink: StatusSink, forge: str) -> None:
    api = sink.url if forge == "github" else f"{sink.url}/api/v4"
    srv, remote = make_server(
        f'status_token_env = "APP_STATUS_TOKEN"\nstatus_repo = "acme/app"\nstatus_api = "{api}"\n'
    )
    sha = remote.push({"version.txt": "v3\n"})
    run = srv.wait(srv.github_hook("main", sha)[1]["run"], "succeeded")
    deadline = time.monotonic() + 10
    while len(sink.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    states = [r["body"]["state"] for r in sink.received]
    last = sink.received[-1]
    assert last["body"]["target_url"].endswith(f"/runs/{run['id']}")
    if forge == "github":
        assert states[0] == "pending" and states[-1] == "success", states
        assert last["path"] == f"/repos/acme/app/statuses/{sha}"
        assert last["headers"]["Authorization"] == f"Bearer {STATUS_TOKEN}"
    else:
        assert states[0] == "pending" and "running" in states and states[-1] == "success", states
        assert last["path"] == f"/api/v4/projects/acme%2Fapp/statuses/{sha}"
        assert last["headers"]["Private-Token"] == STATUS_TOKEN


def test_a_bad_signature_or_an_unmatched_branch_starts_nothing(make_server: Any) -> None:
    srv, remote = make_server()
    sha = remote.push({"version.txt": "v2\n"}, branch="feature/x")
    assert srv.github_hook("feature/x", sha, secret="wrong")[0] == 401
    assert srv.gitlab_hook("feature/x", sha, secret="wrong")[0] == 401
    status, answer = srv.github_hook("other", sha)
    assert status == 200 and "no branch filter of the project matches other" in answer["ignored"]
    assert srv.runs() == []
    log = srv.log.read_text()
    assert "refused: bad signature" in log and "push to app other" in log and "ignored" in log
    sha = remote.push({"pipeline.py": pipeline('pk.on_push(branches=["main"])')}, branch="feature/x")
    status, answer = srv.github_hook("feature/x", sha)
    assert status == 200 and "pk.on_push(branches=[main]) does not match feature/x" in answer["ignored"]
    assert srv.runs() == []


def test_polling_picks_up_a_new_commit(make_server: Any) -> None:
    srv, remote = make_server('poll = "1s"\n')
    time.sleep(2.5)  # the first poll learns the heads
    sha = remote.push({"version.txt": "polled\n"})
    deadline = time.monotonic() + 30
    while not srv.runs() and time.monotonic() < deadline:
        time.sleep(0.3)
    [run] = srv.runs()
    assert (run["trigger"], run["commit"]) == ("poll", sha)
    srv.wait(run["id"], "succeeded")


def test_a_cron_schedule_fires(make_server: Any) -> None:
    srv, _ = make_server(files={"pipeline.py": pipeline('pk.cron("* * * * * */3")'), "version.txt": "v1\n"})
    deadline = time.monotonic() + 30
    while not srv.runs() and time.monotonic() < deadline:
        time.sleep(0.3)
    runs = srv.runs()
    assert runs and runs[-1]["trigger"] == "cron", srv.log.read_text()
    assert srv.wait(runs[-1]["id"], "succeeded", "failed")["status"] == "succeeded"
    assert "schedules * * * * * */3" in srv.log.read_text()


def test_a_manual_run_needs_the_token_and_takes_params(make_server: Any) -> None:
    srv, _ = make_server()
    status, _ = srv.request("POST", "/api/projects/app/runs", b"{}", {"Content-Type": "application/json"})
    assert status == 401
    assert srv.request("GET", "/api/runs")[0] == 401  # reads need it too (public_read is off)
    run = srv.api("POST", "/api/projects/app/runs", {"branch": "main", "params": {"greeting": "bonjour"}})["run"]
    srv.wait(run, "succeeded")
    log = srv.api("GET", f"/api/runs/{run}")
    assert log["trigger"] == "manual" and log["params"] == {"greeting": "bonjour"}
    text = srv.request("GET", f"/api/runs/{run}/log?stage=test", headers={"Authorization": f"Bearer {TOKEN}"})[1]
    assert "bonjour" in text
    again = srv.api("POST", f"/api/runs/{run}/rerun")["run"]
    assert srv.wait(again, "succeeded")["params"] == {"greeting": "bonjour"}
    assert [r["id"] for r in srv.runs(project="app", branch="main", status="succeeded")] == [again, run]
    assert srv.runs(branch="elsewhere") == [] and srv.runs(status="failed") == []


def test_a_newer_push_cancels_the_older_run_of_its_branch(make_server: Any, docker_client: Any) -> None:
    srv, remote = make_server(
        "cancel_superseded = true\n", files={"pipeline.py": pipeline(lines=60, pause=0.5), "version.txt": "v1\n"}
    )
    first = srv.github_hook("main", remote.push({"version.txt": "a\n"}))[1]["run"]
    srv.wait(first, "running")
    time.sleep(3)  # its stages run
    second = srv.github_hook("main", remote.push({"version.txt": "b\n", "pipeline.py": pipeline()}))[1]["run"]
    assert srv.wait(first, "cancelled")["error"].startswith("superseded by a newer commit of main")
    assert srv.wait(second, "succeeded")["status"] == "succeeded"
    for run in (first, second):  # other tests' containers may come and go meanwhile: this run's only
        run_id = srv.api("GET", f"/api/runs/{run}")["run_id"]
        assert run_id and not docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"})


def test_sigterm_interrupts_the_running_run_and_a_restart_runs_the_queued_one(
    make_server: Any, busybox_image: str, docker_client: Any
) -> None:
    srv, remote = make_server(
        server="max_parallel_runs = 1", files={"pipeline.py": pipeline(lines=60, pause=0.5), "version.txt": "v1\n"}
    )
    running = srv.api("POST", "/api/projects/app/runs", {"branch": "main"})["run"]
    quick = remote.push({"pipeline.py": pipeline()})
    queued = srv.api("POST", "/api/projects/app/runs", {"branch": "main", "params": {"greeting": "later"}})["run"]
    srv.wait(running, "running")
    time.sleep(3)
    assert srv.api("GET", f"/api/runs/{queued}")["status"] == "queued"
    run_id = srv.api("GET", f"/api/runs/{running}")["run_id"]
    assert run_id
    assert srv.stop(signal.SIGTERM) == 0
    assert "interrupting runs" in srv.log.read_text() and srv.log.read_text().rstrip().endswith(
        "pipekit serve: stopped"
    )
    assert not docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"})
    srv.start(busybox_image)
    stopped = srv.api("GET", f"/api/runs/{running}")
    assert stopped["status"] == "interrupted"
    assert [s["status"] for s in stopped["stages"]][:1] in (["succeeded"], ["interrupted"])
    assert srv.wait(queued, "succeeded", timeout=120)["commit"] == quick


# -- the web view ----------------------------------------------------------------------------


def _log_in(browser: Any, srv: Server) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(srv.url + "/")
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()


def _until(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
            if found:
                return found
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_the_web_view_lists_runs_streams_a_running_log_and_cancels(
    make_server: Any, browser: Any, docker_client: Any
) -> None:
    from selenium.webdriver.common.by import By

    srv, remote = make_server(files={"pipeline.py": pipeline(lines=40, pause=0.5), "version.txt": "v1\n"})
    run = srv.github_hook("main", remote.push({"version.txt": "web\n"}))[1]["run"]
    _log_in(browser, srv)
    cookie = _until(lambda: browser.get_cookie("pipekit_session"))
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    row = _until(lambda: browser.find_element(By.CSS_SELECTOR, "#runs tbody tr"))
    assert row.text.split()[:3] == [f"#{run}", "app", "main"]
    row.find_element(By.TAG_NAME, "a").click()
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, "#stages tbody tr[data-stage=build]"))
    lines = _until(
        lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#live .line") if "test line 3" in e.text]
    )
    assert lines == ["test | test line 3"]
    assert srv.api("GET", f"/api/runs/{run}")["status"] == "running"  # it streamed while the stage ran
    browser.find_element(By.ID, "cancel").click()
    assert srv.wait(run, "cancelled")["status"] == "cancelled"
    _until(lambda: browser.find_element(By.ID, "title").text.endswith("cancelled"))
    frame = browser.find_element(By.ID, "report")
    assert frame.get_attribute("src").startswith(f"{srv.url}/runs/{run}/report")
    browser.switch_to.frame(frame)
    _until(lambda: "test line 3" in browser.page_source)  # the report: stages, timeline, logs
    from selenium.common.exceptions import WebDriverException

    with pytest.raises(WebDriverException, match="cross-origin"):  # the report (a run's texts) is sandboxed:
        browser.execute_script("return window.parent.document.body.dataset.csrf")  # it cannot read this page
    browser.switch_to.default_content()
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    run_id = srv.api("GET", f"/api/runs/{run}")["run_id"]
    assert run_id and not docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"})


def test_public_read_opens_reads_but_not_actions(make_server: Any) -> None:
    srv, _ = make_server(server="public_read = true")
    assert srv.request("GET", "/api/runs")[0] == 200
    assert srv.request("POST", "/api/projects/app/runs", b"{}", {"Content-Type": "application/json"})[0] == 401
    assert srv.runs() == []


def test_a_form_post_without_the_csrf_token_is_refused(make_server: Any) -> None:
    srv, _ = make_server()
    run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"})["run"]
    srv.wait(run, "succeeded")
    import http.client  # urllib would follow the redirect and drop the cookie

    conn = http.client.HTTPConnection("127.0.0.1", srv.port)
    conn.request(
        "POST", "/login", body=f"token={TOKEN}&next=/", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    cookie = response.getheader("set-cookie", "").split(";")[0]
    assert response.status == 303 and cookie.startswith("pipekit_session=")
    assert "HttpOnly" in response.getheader("set-cookie", "") and "SameSite=strict" in response.getheader(
        "set-cookie", ""
    )
    form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
    assert srv.request("POST", f"/api/runs/{run}/rerun", b"csrf=forged", form)[0] == 401
    assert len(srv.runs()) == 1
    assert json.dumps(srv.runs()).count(HOOK_SECRET) == 0


def test_a_bad_configuration_or_a_missing_token_exits_2_saying_what_to_fix(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    def serve(config: str, **env: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "s.toml").write_text(config)
        return subprocess.run(
            [sys.executable, "-m", "pipekit", "serve", "--config", str(tmp_path / "s.toml")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )

    ok_token = {"PIPEKIT_SERVER_TOKEN": TOKEN}
    cases = [
        ("[server\n", ok_token, "is not valid TOML"),
        ('[server]\nlisten = "nowhere"\n', ok_token, "[server].listen takes HOST:PORT"),
        ('[[project]]\nname = "app"\nrepo = "x"\nbranch = ["main"]\n', ok_token, "[[project]] app has no key 'branch'"),
        ('[[project]]\nname = "app"\nrepo = "x"\npoll = "often"\n', ok_token, "poll"),
        ("[server]\n", {"PIPEKIT_SERVER_TOKEN": "short"}, "set PIPEKIT_SERVER_TOKEN to a token of 16 or more"),
        ('[server]\nmax_webhook_body = "lots"\n', ok_token, "[server].max_webhook_body takes a size in bytes"),
        ('[server]\nsession_lifetime = "forever"\n', ok_token, "session_lifetime"),
        ('[[project]]\nname = "app"\nrepo = "x"\nhost_stages = "no"\n', ok_token, "host_stages takes a bool"),
        (
            '[[project]]\nname = "app"\nrepo = "x"\npass_env = ["A B"]\n',
            ok_token,
            "pass_env takes names of environment",
        ),
        (  # a gate of a server run is decided by a user of the server, never by the configuration
            '[[project]]\nname = "app"\nrepo = "x"\nargs = ["-j", "2", "--approve=deploy"]\n',
            ok_token,
            "[[project]] app.args may not hold --approve",
        ),
        (
            '[[project]]\nname = "app"\nrepo = "x"\npass_env = ["PIPEKIT_APPROVE"]\n',
            ok_token,
            "[[project]] app.pass_env may not hold PIPEKIT_APPROVE",
        ),
    ]
    for config, env, message in cases:
        proc = serve(config, **env)
        assert proc.returncode == 2, (config, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_push_of_a_pipeline_that_does_not_load_is_recorded_with_its_error(make_server: Any) -> None:
    srv, remote = make_server()
    sha = remote.push({"pipeline.py": "import pipekit as pk\n\n\ndef broken(:\n    pass\n"})
    status, answer = srv.github_hook("main", sha)
    assert status == 202, answer
    run = srv.wait(answer["run"], "error")
    assert "SyntaxError" in run["error"] and "pipeline.py" in run["error"], run
    assert "cannot read the triggers of app" in srv.log.read_text()
