"""Approval gates in server mode, through a real `pipekit serve` process, a real git remote, the
Docker engine and Chromium: a run that reaches a gate awaits approval (commit status pending),
users decide on the run page or with the API (approvers, separate_approver, the server's
per-environment rules), the server resumes the run by itself, also after a restart; the
deployments page lists what went where."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import Remote, Server, StatusSink
from test_server import _until

pytestmark = pytest.mark.docker

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"
CAROL = "carol-token-0123456789abcdef"
USERS = f"""
[users.alice]
token_env = "ALICE_TOKEN"
groups = ["ops"]

[users.bob]
token_env = "BOB_TOKEN"
groups = ["ops"]

[users.carol]
token_sha256 = "{hashlib.sha256(CAROL.encode()).hexdigest()}"
groups = ["release"]
"""

GATED = """import pipekit as pk

pipeline = pk.Pipeline(name="app", image="busybox")


@pipeline.stage
def build(ctx):
    ctx.sh("echo built-in-the-first-process > built.txt; echo building")


@pipeline.stage(needs=[build])
def test(ctx):
    ctx.sh("echo testing")


@pipeline.stage(
    needs=[test],
    environment="production",
    approval=pk.Approval(
        message="Deploy to production?",
        approvers=["ops"],
        params=[pk.param("reason", help="why now"), pk.param("canary", default="10")],
    ),
)
def deploy(ctx):
    a = ctx.approval
    ctx.sh("echo deploying by %s because %s canary %s; cat built.txt" % (a.by, a.params.reason, a.params.canary))
    ctx.sh("echo deploy-start $(date +%s); sleep 2; echo deploy-end $(date +%s)")


@pipeline.stage(needs=[build], environment="staging")
def stage_it(ctx):
    ctx.sh("echo to staging")
"""

PROJECT = """name = "app"
repo = "remote.git"
branches = ["main"]
"""


@pytest.fixture
def gated_server(tmp_path: Path, busybox_image: str) -> Iterator[Any]:
    started: list[Server] = []

    def make(project: str = "", server: str = "", approve: str | None = None) -> tuple[Server, Remote]:
        remote = Remote(tmp_path)
        remote.push({"pipeline.py": GATED}, message="first")
        srv = Server(tmp_path, PROJECT + project, server + USERS)
        srv.extra_env.update(ALICE_TOKEN=ALICE, BOB_TOKEN=BOB)
        if approve is not None:
            srv.extra_env.update(PIPEKIT_APPROVE=approve)
        started.append(srv.start(busybox_image))
        return srv, remote

    yield make
    for srv in started:
        if srv.proc is not None:
            srv.stop()


def _log(srv: Server, run: int, stage: str) -> str:
    status, text = srv.request(
        "GET", f"/api/runs/{run}/log?stage={stage}", headers={"Authorization": f"Bearer {ALICE}"}
    )
    assert status == 200
    return str(text)


def _decide(srv: Server, run: int, token: str, **body: Any) -> tuple[int, Any]:
    import json

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return srv.request("POST", f"/api/runs/{run}/approvals", json.dumps(body).encode(), headers)


def _log_in(browser: Any, srv: Server, token: str, page: str) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get("about:blank")
    browser.get_log("browser")  # the shared browser's earlier pages (other tests' servers, gone) are not this test's
    browser.get(srv.url + page)
    browser.find_element(By.NAME, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form.login button").click()
    _until(lambda: browser.find_element(By.ID, "user").text)


def test_two_users_in_chromium_the_trigger_is_refused_the_other_approves_and_the_run_goes_on(
    gated_server: Any, browser: Any, docker_client: Any
) -> None:
    from selenium.webdriver.common.by import By

    sink = StatusSink()
    try:
        srv, _ = gated_server(
            f'separate_approver = true\nstatus_token_env = "APP_STATUS_TOKEN"\nstatus_repo = "acme/app"\n'
            f'status_api = "{sink.url}"\n'
        )
        # bob triggers a run from the runs page
        _log_in(browser, srv, BOB, "/")
        browser.find_element(By.ID, "trigger-app").click()
        _until(lambda: "/runs/" in browser.current_url)
        run = int(browser.current_url.rstrip("/").rsplit("/", 1)[1])
        waiting = srv.wait(run, "awaiting_approval")
        assert waiting["triggered_by"] == "bob"
        stages = {s["name"]: s["status"] for s in waiting["stages"]}
        assert stages == {
            "build": "succeeded",
            "test": "succeeded",
            "deploy": "awaiting_approval",
            "stage_it": "succeeded",
        }
        [gate] = waiting["gates"]
        assert (gate["stage"], gate["message"], gate["approvers"], gate["decision"]) == (
            "deploy", "Deploy to production?", ["ops"], None,
        )  # fmt: skip
        assert not docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={waiting['run_id']}"})
        _until(lambda: any(s["body"]["description"] == "awaiting approval" for s in sink.received))
        pending = [s["body"] for s in sink.received if s["body"]["description"] == "awaiting approval"]
        assert pending[-1]["state"] == "pending" and pending[-1]["target_url"].endswith(f"/runs/{run}")

        # bob, who triggered it, is refused by separate_approver on the page
        _until(lambda: browser.find_element(By.ID, "approve-deploy"))
        box = browser.find_element(By.CSS_SELECTOR, "section.gate[data-stage=deploy]")
        assert "Deploy to production?" in box.text and "approvers: ops" in box.text
        browser.find_element(By.ID, "param-deploy-reason").send_keys("bob wants it")
        browser.find_element(By.ID, "approve-deploy").click()
        notice = _until(lambda: browser.find_element(By.ID, "notice").text)
        assert "bob triggered run" in notice and "separate_approver = true" in notice, notice
        assert srv.api("GET", f"/api/runs/{run}", token=ALICE)["status"] == "awaiting_approval"

        # alice approves with her params: the server resumes the run by itself
        _log_in(browser, srv, ALICE, f"/runs/{run}")
        assert browser.find_element(By.ID, "user").text == "alice"
        _until(lambda: browser.find_element(By.ID, "param-deploy-reason")).send_keys("release 1.2")
        canary = browser.find_element(By.ID, "param-deploy-canary")
        assert canary.get_attribute("value") == "10"
        canary.clear()
        canary.send_keys("25")
        browser.find_element(By.ID, "approve-deploy").click()
        done = srv.wait(run, "succeeded", "failed", timeout=120)
        assert done["status"] == "succeeded", done
        assert {s["name"]: s["status"] for s in done["stages"]}["deploy"] == "succeeded"
        assert done["run_id"] != waiting["run_id"]  # a resumed pipekit run, in the same server run
        text = _log(srv, run, "deploy")
        assert "deploying by alice because release 1.2 canary 25" in text
        assert "built-in-the-first-process" in text  # the same workspace: the first process's files
        decided = _until(lambda: browser.find_element(By.CSS_SELECTOR, "section.gate .decision").text)
        assert decided.startswith("approved by alice"), decided
        _until(lambda: browser.find_element(By.ID, "title").text.endswith("succeeded"))
        _until(lambda: sink.received[-1]["body"]["state"] == "success")

        # the deployments page: production by alice, staging without approval
        browser.find_element(By.ID, "nav-deployments").click()
        rows = _until(lambda: [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#deployments tbody tr")])
        production = [r for r in rows if r.startswith("production")]
        assert len(production) == 1 and f"#{run}" in production[0] and "alice" in production[0], rows
        assert "succeeded" in production[0] and done["commit"][:12] in production[0]
        assert any(r.startswith("staging") for r in rows), rows
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        sink.close()


def test_a_restarted_server_keeps_the_waiting_run_and_an_approval_resumes_it(
    gated_server: Any, busybox_image: str, docker_client: Any
) -> None:
    srv, _ = gated_server()
    run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"]
    first = srv.wait(run, "awaiting_approval")
    assert srv.stop(signal.SIGTERM) == 0
    srv.start(busybox_image)
    assert srv.api("GET", f"/api/runs/{run}", token=ALICE)["status"] == "awaiting_approval"
    # refusals, each saying why; nothing recorded, the run still waits
    status, answer = _decide(srv, run, CAROL, stage="deploy", decision="approve", params={"reason": "x"})
    assert status == 403 and "carol may not decide on 'deploy': its approvers are ops" in answer["error"]
    status, answer = _decide(srv, run, ALICE, stage="deploy", decision="approve")
    assert status == 400 and "needs --param reason" in answer["error"], answer
    status, answer = _decide(srv, run, ALICE, stage="deploy", decision="reject")
    assert status == 400 and "a rejection needs a reason" in answer["error"], answer
    status, answer = _decide(srv, run, ALICE, stage="nope", decision="approve")
    assert status == 404
    assert _decide(srv, run, ALICE, stage="deploy", decision="maybe")[0] == 400
    assert srv.request("POST", f"/api/runs/{run}/approvals", b"{}", {"Content-Type": "application/json"})[0] == 401
    assert srv.api("GET", f"/api/runs/{run}", token=ALICE)["status"] == "awaiting_approval"
    # alice triggered it, and this project has no separate_approver: she may approve
    status, answer = _decide(srv, run, ALICE, stage="deploy", decision="approve", params={"reason": "after restart"})
    assert (status, answer["decision"], answer["by"]) == (200, "approved", "alice"), answer
    assert _decide(srv, run, BOB, stage="deploy", decision="approve", params={"reason": "again"})[0] == 409
    done = srv.wait(run, "succeeded", "failed", timeout=120)
    assert done["status"] == "succeeded", done
    assert "deploying by alice because after restart canary 10" in _log(srv, run, "deploy")
    [gate] = done["gates"]
    assert gate["decision"]["by"] == "alice" and gate["decision"]["via"] == "server"
    assert gate["decision"]["from"] == "127.0.0.1"
    assert "'deploy' approved by alice from 127.0.0.1" in srv.log.read_text()
    for rid in (first["run_id"], done["run_id"]):
        assert not docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={rid}"})
    # a rejection fails the stage with its reason; a waiting run can be cancelled
    rejected = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"]
    srv.wait(rejected, "awaiting_approval")
    assert _decide(srv, rejected, BOB, stage="deploy", decision="reject", reason="not on a Friday")[0] == 200
    failed = srv.wait(rejected, "succeeded", "failed", timeout=120)
    deploy = {s["name"]: s for s in failed["stages"]}["deploy"]
    assert failed["status"] == "failed" and "not on a Friday" in (deploy["error"] or ""), failed
    cancelled = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"]
    srv.wait(cancelled, "awaiting_approval")
    assert srv.api("POST", f"/api/runs/{cancelled}/cancel", token=ALICE) == {"cancelled": True}
    assert srv.wait(cancelled, "cancelled")["status"] == "cancelled"
    deployments = srv.api("GET", "/api/deployments?environment=production", token=ALICE)
    assert [(d["run"], d["approved_by"], d["outcome"]) for d in deployments] == [(run, "alice", "succeeded")]


def test_the_server_s_environment_rules_replace_the_pipeline_s_approvers(gated_server: Any) -> None:
    srv, _ = gated_server(
        server='\n[environments.production]\napprovers = ["release"]\nseparate_approver = true\ntimeout = "1h"\n'
        '\n[environments.staging]\napprovers = ["alice"]\nmessage = "Stage it?"\n'
    )
    run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=CAROL)["run"]
    waiting = srv.wait(run, "awaiting_approval")
    gates = {g["stage"]: g for g in waiting["gates"]}
    assert gates["deploy"]["approvers"] == ["release"] and gates["deploy"]["deadline"] > time.time() + 3000
    assert (gates["stage_it"]["message"], gates["stage_it"]["approvers"]) == (
        "Stage it?",
        ["alice"],
    )  # gated by the server
    status, answer = _decide(srv, run, ALICE, stage="deploy", decision="approve", params={"reason": "ops"})
    assert status == 403 and "its approvers are release" in answer["error"]  # ops no longer may
    status, answer = _decide(srv, run, CAROL, stage="deploy", decision="approve", params={"reason": "mine"})
    assert status == 403 and "[environments.production]" in answer["error"]  # she triggered it
    assert _decide(srv, run, ALICE, stage="stage_it", decision="approve")[0] == 200
    again = srv.wait(run, "awaiting_approval", "failed", "succeeded", timeout=120)  # resumed: deploy waits still
    assert again["run_id"] != waiting["run_id"]
    stages = {s["name"]: s["status"] for s in again["stages"]}
    assert stages["stage_it"] == "succeeded" and stages["deploy"] == "awaiting_approval", again


def test_a_gate_past_its_timeout_fails_its_stage_without_anyone_deciding(gated_server: Any) -> None:
    srv, _ = gated_server(server='\n[environments.production]\ntimeout = "4s"\n')
    run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"]
    waiting = srv.wait(run, "awaiting_approval")
    [gate] = waiting["gates"]
    assert gate["approvers"] == ["ops"]  # the environment sets no approvers: the pipeline's stay
    done = srv.wait(run, "failed", "succeeded", timeout=60)  # the server resumes it by itself
    deploy = {s["name"]: s for s in done["stages"]}["deploy"]
    assert done["status"] == "failed" and deploy["error"] == "approval timed out after 4s", done
    assert "the gate of 'deploy' timed out" in srv.log.read_text()
    assert _decide(srv, run, ALICE, stage="deploy", decision="approve", params={"reason": "late"})[0] == 409


def test_two_approved_runs_deploy_to_one_environment_one_after_the_other(gated_server: Any) -> None:
    import re

    srv, _ = gated_server()  # max_parallel_runs = 2: both resume at once, the environment takes one at a time
    runs = [srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"] for _ in range(2)]
    for run in runs:
        srv.wait(run, "awaiting_approval", timeout=120)
    for run in runs:
        assert _decide(srv, run, BOB, stage="deploy", decision="approve", params={"reason": f"r{run}"})[0] == 200
    spans = []
    for run in runs:
        assert srv.wait(run, "succeeded", "failed", timeout=180)["status"] == "succeeded"
        text = _log(srv, run, "deploy")
        start, end = (int(re.search(rf"deploy-{k} (\d+)", text).group(1)) for k in ("start", "end"))  # type: ignore[union-attr]
        spans.append((start, end))
    (s1, e1), (s2, e2) = sorted(spans)
    assert e1 <= s2, spans  # never both at once
    deployed = srv.api("GET", "/api/deployments?environment=production", token=ALICE)
    assert sorted(d["run"] for d in deployed) == runs and {d["approved_by"] for d in deployed} == {"bob"}


MATRIX = """import pipekit as pk

pipeline = pk.Pipeline(name="app", image="busybox")


@pipeline.stage(environment="production", matrix={"region": ["eu", "us"]})
def deploy(ctx):
    ctx.sh("echo deploying to %s" % ctx.matrix["region"])
"""


def test_separate_approver_of_an_environment_holds_for_each_instance_of_a_matrix_stage(
    tmp_path: Path, busybox_image: str
) -> None:
    remote = Remote(tmp_path)
    remote.push({"pipeline.py": MATRIX}, message="first")
    rules = '\n[environments.production]\napprovers = ["release", "ops"]\nseparate_approver = true\n'
    srv = Server(tmp_path, PROJECT, rules + USERS)
    srv.extra_env.update(ALICE_TOKEN=ALICE, BOB_TOKEN=BOB)
    srv.start(busybox_image)
    try:
        run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=CAROL)["run"]
        waiting = srv.wait(run, "awaiting_approval")
        assert sorted(g["stage"] for g in waiting["gates"]) == ["deploy[region=eu]", "deploy[region=us]"]
        status, answer = _decide(srv, run, CAROL, stage="deploy[region=eu]", decision="approve")
        assert status == 403 and "[environments.production]" in answer["error"], answer  # she triggered it
        assert _decide(srv, run, ALICE, stage="deploy[region=eu]", decision="approve")[0] == 200
    finally:
        srv.stop()


def test_pipekit_approve_in_the_server_s_environment_approves_nothing_a_server_user_decides(
    gated_server: Any,
) -> None:
    srv, _ = gated_server(server="\n[environments.production]\nseparate_approver = true\n", approve="deploy")
    run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"]
    waiting = srv.wait(run, "awaiting_approval", "failed", "succeeded", "error", timeout=120)
    assert waiting["status"] == "awaiting_approval", waiting  # not approved by the server's Unix user
    assert "PIPEKIT_APPROVE is set" in srv.log.read_text()  # said once, at start
    status, answer = _decide(srv, run, ALICE, stage="deploy", decision="approve", params={"reason": "mine"})
    assert status == 403 and "separate_approver" in answer["error"]


def test_without_its_record_of_environments_a_run_s_gate_is_not_decided_past_the_server_s_rules(
    gated_server: Any, tmp_path: Path
) -> None:
    srv, _ = gated_server(server="\n[environments.production]\nseparate_approver = true\n")
    run = srv.api("POST", "/api/projects/app/runs", {"branch": "main"}, token=ALICE)["run"]
    srv.wait(run, "awaiting_approval")
    [record] = list(tmp_path.rglob(f"run-{run}.environments.json"))
    record.unlink()  # a run started by an older server, a lost file: the environment is unknown
    status, answer = _decide(srv, run, ALICE, stage="deploy", decision="approve", params={"reason": "mine"})
    assert status == 409 and "[environments] rules cannot be checked" in answer["error"], answer
    assert srv.api("GET", f"/api/runs/{run}", token=ALICE)["status"] == "awaiting_approval"
