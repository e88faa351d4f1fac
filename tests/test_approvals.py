"""Approval gates (``pk.Approval``, ``approval=``), ``pipekit approve``, ``run --resume`` after a
decision, the prompt on a terminal, ``--approve``, timeouts, the CI output, and ``environment=``."""

from __future__ import annotations

import json
import os
import pwd
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from helpers import Terminal, console_popen, run_console

import pipekit as pk
from pipekit.testing import PipelineRunner

USER = pwd.getpwuid(os.geteuid()).pw_name  # (who pipekit records: the account, never $USER)

GATED = """\
import pipekit as pk

@pk.stage
def build(ctx):
    ctx.sh("echo built")
    return "v1"

@pk.stage(
    approval=pk.Approval(
        message="Deploy to production?",
        approvers={approvers!r},
        timeout={timeout!r},
        params=[pk.param("reason", help="why now"), pk.param("replicas", default=2)],
    ),
    environment="production",
)
def deploy(ctx, build):
    a = ctx.approval
    ctx.sh(f"echo deploying {{build}} by {{a.by}}: {{a.params.reason}} x{{a.params.replicas}}")

@pk.stage(needs=[deploy])
def smoke(ctx):
    ctx.sh("echo smoke-ran")

@pk.stage
def lint(ctx):
    ctx.sh("{lint}")
"""


def gated(folder: Path, approvers: list[str] | None = None, timeout: Any = None, lint: str = "echo lint-ran") -> Path:
    (folder / "pipeline.py").write_text(GATED.format(approvers=approvers or [], timeout=timeout, lint=lint))
    return folder


def _pipeline() -> pk.Pipeline:
    p = pk.Pipeline("demo")

    @p.stage
    def build(ctx: pk.Context) -> str:
        return "v1"

    gate = pk.Approval(message="Ship?", params=[pk.param("reason"), pk.param("replicas", default=1)])

    @p.stage(approval=gate)
    def deploy(ctx: pk.Context, build: str) -> Any:
        assert ctx.approval is not None
        return [build, ctx.approval.by, ctx.approval.params.reason, ctx.approval.params.replicas, ctx.approval.when]

    @p.stage(needs=[deploy])
    def notify(ctx: pk.Context) -> None:
        pass

    @p.stage
    def lint(ctx: pk.Context) -> str:
        return "ok"

    return p


# -- the gate on a stage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"approval": "yes"}, "approval= takes pk.Approval"),
        ({"environment": "prod env"}, "environment= an environment takes a name"),
    ],
)
def test_gate_options_are_checked_at_decoration(options: dict[str, Any], message: str) -> None:
    with pytest.raises(pk.PipelineError, match=re.escape(message)):
        pk.stage(**options)(lambda ctx: None)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"message": ""}, "takes the question to ask"),
        ({"approvers": "alice"}, "takes a list of user or group names"),
        ({"timeout": "soon"}, "timeout=...) takes seconds or a string like"),
        ({"params": ["reason"]}, "takes a list of pk.param"),
        ({"params": [pk.param("a"), pk.param("a")]}, "declares 'a' twice"),
    ],
)
def test_an_approval_is_checked_when_made(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(pk.PipelineError, match=re.escape(message)):
        pk.Approval(**fields)


def test_without_approval_the_gated_stage_awaits_and_the_rest_runs(pipekit_runner: PipelineRunner) -> None:
    result = pipekit_runner.run(_pipeline())
    assert result.status == "awaiting_approval" and result.exit_code == 4
    assert result.stages["deploy"].status == "awaiting_approval"
    assert result.stages["deploy"].reason == "awaiting approval: Ship?"
    assert result.stages["notify"].status == "skipped"
    assert result.stages["notify"].reason == "not started: 'deploy' awaits approval"
    assert result.stages["lint"].status == "succeeded" and result.stages["build"].status == "succeeded"


def test_with_approval_the_stage_gets_who_and_the_params(pipekit_runner: PipelineRunner) -> None:
    before = time.time()
    pipekit_runner.approve("deploy", by="alice", params={"reason": "release 2.1", "replicas": "3"})
    result = pipekit_runner.run(_pipeline())
    assert result.status == "succeeded", result.stages
    build, by, reason, replicas, when = result.stages["deploy"].output
    assert (build, by, reason, replicas) == ("v1", "alice", "release 2.1", 3)  # converted to the default's type
    assert before <= when <= time.time()
    assert result.stages["notify"].status == "succeeded"


def test_a_rejected_gate_fails_its_stage_with_the_reason(pipekit_runner: PipelineRunner) -> None:
    pipekit_runner.reject("deploy", by="bob", reason="freeze until Monday")
    result = pipekit_runner.run(_pipeline())
    assert result.status == "failed" and result.exit_code == 1
    assert result.stages["deploy"].error == "rejected by bob: freeze until Monday"
    assert result.stages["notify"].status == "skipped"


def test_an_approval_without_a_required_param_is_refused_before_the_run(pipekit_runner: PipelineRunner) -> None:
    pipekit_runner.approve("deploy", by="alice")
    with pytest.raises(pk.ParameterError, match=re.escape("the approval of 'deploy' needs --param reason=...")):
        pipekit_runner.run(_pipeline())
    assert pipekit_runner.fake.calls == []


def test_approving_a_stage_without_a_gate_is_refused(pipekit_runner: PipelineRunner) -> None:
    pipekit_runner.approve("lint")
    with pytest.raises(pk.UsageError, match=re.escape("no stage of that name has an approval gate (gated: deploy)")):
        pipekit_runner.run(_pipeline())


def test_the_junit_file_shows_an_awaiting_gate_as_skipped_with_how_to_approve(
    pipekit_runner: PipelineRunner, tmp_path: Path
) -> None:
    pipekit_runner.base_dir = tmp_path
    result = pipekit_runner.run(_pipeline(), junit=tmp_path / "junit.xml")
    case = ET.parse(tmp_path / "junit.xml").getroot().find(".//testcase[@name='deploy']")
    assert case is not None
    skipped = case.find("skipped")
    assert skipped is not None
    assert skipped.get("message", "").startswith("awaiting approval: Ship?; approve with `pipekit approve ")
    assert f"pipekit run --resume {result.run.run_id}" in skipped.get("message", "")


# -- across processes: awaiting, pipekit approve, run --resume -----------------------------------


def test_awaiting_then_approve_then_resume_across_processes(tmp_path: Path) -> None:
    gated(tmp_path)
    planned = run_console(["plan"], cwd=tmp_path)
    assert "deploy (host) after build  [runs: once approved (Deploy to production?)]" in planned.stdout
    first = run_console(["run", "--progress", "plain"], cwd=tmp_path)
    assert first.returncode == 4, first.stdout + first.stderr
    assert "AWAITING APPROVAL" in first.stdout and "lint-ran" in first.stdout and "smoke-ran" not in first.stdout
    run_id = re.search(r"run (\w+) awaiting_approval", first.stdout).group(1)  # type: ignore[union-attr]
    assert f"pipekit approve {run_id} deploy, then pipekit run --resume" in first.stderr

    runs = run_console(["runs"], cwd=tmp_path)
    assert re.search(rf"{run_id} .* awaiting_approval", runs.stdout), runs.stdout
    report = run_console(["report", run_id, "-o", str(tmp_path / "report.html")], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "report.html").read_text()
    assert '"status": "awaiting_approval", "attempts"' in html and "awaiting approval: Deploy to production?" in html
    assert ".awaiting_approval{color:" in html and '"awaiting_approval": "#fff8c5"' in html
    shown = run_console(["show", run_id], cwd=tmp_path)
    assert "deploy  awaiting_approval" in shown.stdout
    assert "--param reason=... (required: why now)" in shown.stdout

    missing = run_console(["approve", run_id, "deploy"], cwd=tmp_path)
    assert missing.returncode == 2 and "needs --param reason=... (why now)" in missing.stderr
    assert "Traceback" not in missing.stderr
    ok = run_console(["approve", "last", "deploy", "-p", "reason=hotfix 12", "-p", "replicas=5"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert f"deploy in run {run_id}: approved by {USER}@" in ok.stdout
    again = run_console(["approve", run_id, "deploy", "-p", "reason=x"], cwd=tmp_path)
    assert again.returncode == 2 and "is decided already" in again.stderr

    resumed = run_console(["run", "--resume", run_id, "--progress", "plain"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"deploying v1 by {USER}: hotfix 12 x5" in resumed.stdout
    assert "smoke-ran" in resumed.stdout and "lint-ran" not in resumed.stdout  # restored, not run again
    assert re.search(r"build +restored", resumed.stdout)

    shown = run_console(["show", run_id], cwd=tmp_path).stdout
    assert re.search(rf"deploy: approved by {USER}@\S+ at .* \(pipekit approve\)", shown)
    assert "replicas = 5" in shown
    shown = run_console(["show", "last"], cwd=tmp_path).stdout  # the resumed run
    assert re.search(rf"deploy: approved by {USER}@\S+ at .* \(pipekit approve, on a run this one resumed\)", shown)
    deployments = run_console(["deployments", "production"], cwd=tmp_path)
    assert deployments.returncode == 0
    row = deployments.stdout.splitlines()[1].split()
    assert row[0] == "production" and row[3] == "deploy" and row[4] == USER and row[-1] == "succeeded"


def test_a_rejection_fails_the_resumed_stage_with_its_reason(tmp_path: Path) -> None:
    gated(tmp_path)
    assert run_console(["run", "--progress", "plain"], cwd=tmp_path).returncode == 4
    no_reason = run_console(["approve", "last", "deploy", "--reject"], cwd=tmp_path)
    assert no_reason.returncode == 2 and "a rejection needs a reason" in no_reason.stderr
    rejected = run_console(["approve", "last", "deploy", "--reject", "--reason", "freeze"], cwd=tmp_path)
    assert rejected.returncode == 0 and "rejected (freeze)" in rejected.stdout
    resumed = run_console(["run", "--resume", "--progress", "plain"], cwd=tmp_path)
    assert resumed.returncode == 1
    assert f"rejected by {USER}: freeze" in resumed.stdout and "deploying" not in resumed.stdout


def test_a_gate_past_its_timeout_fails_its_stage(tmp_path: Path) -> None:
    gated(tmp_path, timeout="1s")
    assert run_console(["run", "--progress", "plain"], cwd=tmp_path).returncode == 4
    time.sleep(1.2)
    late = run_console(["approve", "last", "deploy", "-p", "reason=late"], cwd=tmp_path)
    assert late.returncode == 2 and "timed out (approval timed out after 1s)" in late.stderr
    resumed = run_console(["run", "--resume", "--progress", "plain"], cwd=tmp_path)
    assert resumed.returncode == 1
    assert "approval timed out after 1s" in resumed.stdout and "deploying" not in resumed.stdout


def test_the_approvers_are_enforced(tmp_path: Path) -> None:
    gated(tmp_path, approvers=["somebody-else"])
    scripted = run_console(["run", "--approve", "deploy", "--approval-param", "deploy.reason=x"], cwd=tmp_path)
    assert scripted.returncode == 2
    assert f"--approve deploy: {USER} is not among its approvers (somebody-else)" in scripted.stderr
    assert run_console(["run", "--progress", "plain"], cwd=tmp_path).returncode == 4
    refused = run_console(["approve", "last", "deploy", "-p", "reason=x"], cwd=tmp_path)
    assert refused.returncode == 2 and f"{USER} may not decide on 'deploy'" in refused.stderr


def test_approve_on_the_command_line_opens_the_gate_for_scripts(tmp_path: Path) -> None:
    gated(tmp_path, approvers=[USER])
    done = run_console(
        ["run", "--progress", "plain", "--approve", "deploy", "--approval-param", "deploy.reason=scripted"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deploying v1 by {USER}: scripted x2" in done.stdout
    shown = run_console(["show", "last"], cwd=tmp_path).stdout
    assert re.search(rf"deploy: approved by {USER}@\S+ at .* \(--approve\)", shown)
    unknown = run_console(["run", "--approve", "lint"], cwd=tmp_path)
    assert unknown.returncode == 2 and "no stage of that name has an approval gate (gated: deploy)" in unknown.stderr
    no_param = run_console(["run", "--approve", "deploy"], env={**os.environ, "PIPEKIT_APPROVE": ""}, cwd=tmp_path)
    assert no_param.returncode == 2 and "needs --param reason=..." in no_param.stderr


def test_in_a_ci_the_run_ends_awaiting_and_says_how_to_approve(tmp_path: Path) -> None:
    gated(tmp_path)
    summary = tmp_path / "summary.md"
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    github = run_console(["run"], cwd=tmp_path, env=env)
    assert github.returncode == 4
    notice = next(line for line in github.stdout.splitlines() if line.startswith("::notice"))
    assert "deploy awaits approval" in notice and "pipekit approve " in notice and "PIPEKIT_APPROVE=deploy" in notice
    text = summary.read_text()
    assert "**Awaiting approval**" in text and re.search(r"- `deploy`: approve with `pipekit approve \w+ deploy`", text)
    jenkins = run_console(["run"], cwd=tmp_path, env={**os.environ, "JENKINS_URL": "http://ci.example/"})
    assert jenkins.returncode == 4 and "[deploy] = AWAITING APPROVAL" in jenkins.stdout
    assert re.search(r"'deploy' awaits approval: pipekit approve \w+ deploy, then pipekit run --resume", jenkins.stderr)
    gitlab = run_console(["run"], cwd=tmp_path, env={**os.environ, "GITLAB_CI": "true"})
    assert gitlab.returncode == 4
    # (the output is read in text mode, which turns the marker's \r into \n)
    start = re.search(
        r"\x1b\[0Ksection_start:\d+:pipekit_approval_deploy\n\x1b\[0Kdeploy +\| awaits approval\n", gitlab.stdout
    )
    assert start, gitlab.stdout
    after = gitlab.stdout[start.end() :]
    assert re.match(
        r"  approve with `pipekit approve \w+ deploy`.*\n\x1b\[0Ksection_end:\d+:pipekit_approval_deploy", after
    )


# -- on a terminal -------------------------------------------------------------------------------


def _no_ci() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL")}


def test_the_prompt_asks_at_the_gate_while_the_rest_goes_on_and_approves(tmp_path: Path) -> None:
    gated(tmp_path, lint="sleep 1; echo lint-ran")
    term = Terminal(["run", "--progress", "plain"], cwd=tmp_path, env=_no_ci())
    try:
        asked = term.expect("Approve 'deploy'? [y]es / [n]o (reject) / [l]ater:", timeout=60)
        assert "Deploy to production?" in asked and "so far: build succeeded" in asked
        term.expect("lint-ran", timeout=30)  # the rest of the run goes on while the gate waits
        term.send("y\n")
        term.expect("reason (why now):")
        term.send("\n")  # required: asked again
        term.expect("reason is required")
        term.send("the fix\n")
        term.expect("replicas [2]:")
        term.send("four\n")  # not an int: asked again
        term.expect("expected int")
        term.send("4\n")
        code = term.wait(timeout=60)
    finally:
        term.close()
    text = term.text()
    assert code == 0, text
    assert f"deploying v1 by {USER}: the fix x4" in text and "smoke-ran" in text


def test_the_prompt_rejects_with_a_reason(tmp_path: Path) -> None:
    gated(tmp_path)
    term = Terminal(["run", "--progress", "plain"], cwd=tmp_path, env=_no_ci())
    try:
        term.expect("Approve 'deploy'?", timeout=60)
        term.send("n\n")
        term.expect("reason for rejecting:")
        term.send("not on a Friday\n")
        code = term.wait(timeout=60)
    finally:
        term.close()
    assert code == 1, term.text()
    assert f"rejected by {USER}: not on a Friday" in term.text() and "deploying" not in term.text()
    shown = run_console(["show", "last"], cwd=tmp_path).stdout
    assert re.search(rf"deploy: rejected by {USER}@\S+ at .* \(prompt\): not on a Friday", shown)


def test_deciding_later_at_the_prompt_leaves_the_gate_awaiting(tmp_path: Path) -> None:
    gated(tmp_path)
    term = Terminal(["run", "--progress", "live"], cwd=tmp_path, env=_no_ci())
    try:
        term.expect("Approve 'deploy'?", timeout=60)
        term.send("l\n")
        code = term.wait(timeout=60)
    finally:
        term.close()
    assert code == 4, term.text()
    assert "awaiting_approval" in run_console(["runs"], cwd=tmp_path).stdout


def test_ctrl_c_at_the_prompt_stops_the_run_and_leaves_nothing(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    (tmp_path / "pipeline.py").write_text(
        f"import pipekit as pk\n\n@pk.stage(image={busybox_image!r})\ndef build(ctx):\n    ctx.sh('echo built')\n\n"
        f"@pk.stage(image={busybox_image!r}, needs=[build], approval=pk.Approval(message='Ship it?'))\n"
        "def deploy(ctx):\n    ctx.sh('echo deploying')\n\n"
        f"@pk.stage(image={busybox_image!r})\ndef slow(ctx):\n    ctx.sh('echo slow-started; sleep 60')\n"
    )
    term = Terminal(["run", "--progress", "plain"], cwd=tmp_path, env=_no_ci())
    try:
        head = term.expect("Approve 'deploy'?", timeout=90)
        run_id = re.search(r"run (\w+)\)", head).group(1)  # type: ignore[union-attr]
        term.expect("slow-started", timeout=60) if "slow-started" not in head else None
        held = docker_client.containers.list(
            all=True, filters={"label": [f"io.pipekit.run={run_id}", "io.pipekit.stage=deploy"]}
        )
        assert held == []  # nothing is held for the gated stage while it waits
        term.send("\x03")
        code = term.wait(timeout=60)
    finally:
        term.close()
    assert code == 130, term.text()
    assert docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"}) == []
    runs = run_console(["runs"], cwd=tmp_path).stdout
    assert re.search(rf"{run_id} .* interrupted", runs), runs


# -- environments ----------------------------------------------------------------------------------

ENVIRONMENT = """\
import pipekit as pk, time, pathlib

@pk.stage(environment="production")
def deploy(ctx):
    start = time.time()
    time.sleep(1.5)
    with open(pathlib.Path(__file__).parent / "spans.jsonl", "a") as f:
        f.write(__import__("json").dumps([ctx.run_id, start, time.time()]) + "\\n")
"""


def test_one_run_at_a_time_deploys_to_an_environment(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(ENVIRONMENT)
    env = {**os.environ, "PIPEKIT_LOCK_DIR": str(tmp_path / "locks")}
    procs = [
        console_popen(["run", "--progress", "plain"], cwd=tmp_path, env=env, stdout=-1, stderr=-1) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    spans = sorted(json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines())
    (_, s1, e1), (_, s2, e2) = sorted(spans, key=lambda s: s[1])
    assert e1 <= s2, spans  # never both at once
    assert any("waiting for environment" in out for out, _ in outputs)
    rows = run_console(["deployments"], cwd=tmp_path).stdout.splitlines()[1:]
    assert len(rows) == 2 and all(r.split()[0] == "production" and r.split()[-1] == "succeeded" for r in rows)


NEWEST = """\
import pipekit as pk, pathlib, time

@pk.stage(environment=pk.Environment("production", queue="newest"))
def deploy(ctx):
    folder = pathlib.Path(__file__).parent
    (folder / f"started-{ctx.run_id}").touch()
    deadline = time.time() + 60
    while not (folder / "release").exists() and time.time() < deadline:
        time.sleep(0.05)
"""


def _until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_with_queue_newest_an_older_waiting_run_is_cancelled(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(NEWEST)
    env = {**os.environ, "PIPEKIT_LOCK_DIR": str(tmp_path / "locks")}
    line = lambda: list((tmp_path / "locks").glob("*.waiting/*"))  # noqa: E731  # the runs waiting in line
    logs = [tmp_path / f"run-{i}.log" for i in range(3)]
    procs = []

    def start(i: int) -> None:
        with open(logs[i], "w") as f:
            procs.append(console_popen(["run", "--progress", "plain"], cwd=tmp_path, env=env, stdout=f, stderr=f))

    start(0)
    _until(lambda: list(tmp_path.glob("started-*")))  # the first deploys (and waits for "release")
    start(1)
    _until(lambda: len(line()) == 1)  # the second waits in line
    start(2)
    assert procs[1].wait(timeout=60) == 1  # the older waiting run gives up for the newer one
    (tmp_path / "release").touch()
    codes = [procs[0].wait(timeout=60), procs[2].wait(timeout=60)]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    assert "cancelled: a newer run waits to deploy to production" in texts[1]
    assert "waiting for environment" in texts[1] and "waiting for environment" in texts[2]
    assert len(list(tmp_path.glob("started-*"))) == 2  # the first and the newest deployed
    assert line() == []  # nobody left in line
    rows = run_console(["deployments", "production"], cwd=tmp_path).stdout.splitlines()[1:]
    assert len(rows) == 2 and all(r.split()[-1] == "succeeded" for r in rows)


def test_an_environment_is_checked_when_made() -> None:
    with pytest.raises(pk.PipelineError, match=re.escape("is 'all' or 'newest', got 'oldest'")):
        pk.Environment("production", queue="oldest")
    assert pk.stage(environment="staging")(lambda ctx: None).environment == pk.Environment("staging")


def test_a_gate_that_times_out_at_the_prompt_fails_its_stage(tmp_path: Path) -> None:
    gated(tmp_path, timeout="2s")
    term = Terminal(["run", "--progress", "plain"], cwd=tmp_path, env=_no_ci())
    try:
        term.expect("approvers: anyone; times out in 2s", timeout=60)
        code = term.wait(timeout=60)  # nobody answers
    finally:
        term.close()
    assert code == 1, term.text()
    assert "approval timed out after 2s" in term.text() and "deploying" not in term.text()


def test_a_failure_elsewhere_ends_the_question_and_the_gated_stage_does_not_start(tmp_path: Path) -> None:
    import threading

    from pipekit._run.runner import execute
    from pipekit._run.session import RunRequest

    p = pk.Pipeline("stop")
    asked = threading.Event()

    @p.stage(approval=pk.Approval(message="Ship?"))
    def deploy(ctx: pk.Context) -> None:
        pass

    @p.stage
    def tests(ctx: pk.Context) -> None:
        assert asked.wait(10)  # fails while the gate is being asked about
        raise RuntimeError("red")

    def prompter(ask: Any, stop: threading.Event) -> None:
        asked.set()
        assert stop.wait(10), "the question was not ended"
        return None

    with open(os.devnull, "w") as devnull:
        result = execute(RunRequest(pipeline=p, workspace=tmp_path, prompter=prompter, log_file=devnull))
    assert result.status == "failed"
    assert result.stages["tests"].status == "failed"
    assert (
        result.stages["deploy"].status == "skipped" and result.stages["deploy"].reason == "not started: 'tests' failed"
    )


def test_an_approved_gate_on_the_engine_runs_its_stage_in_its_container(
    tmp_path: Path, busybox_image: str, docker_client: Any
) -> None:
    (tmp_path / "pipeline.py").write_text(
        f"import pipekit as pk\n\n@pk.stage(image={busybox_image!r})\ndef build(ctx):\n    ctx.sh('echo built')\n\n"
        f"@pk.stage(image={busybox_image!r}, needs=[build], environment='production',\n"
        "          approval=pk.Approval(message='Ship it?', params=[pk.param('reason')]))\n"
        "def deploy(ctx):\n"
        "    ctx.env['REASON'] = ctx.approval.params.reason\n"
        "    ctx.sh('echo deploying in $(hostname) because $REASON by ' + ctx.approval.by)\n"
    )
    env = {**os.environ, "PIPEKIT_LOCK_DIR": str(tmp_path / "locks")}
    first = run_console(["run", "--progress", "plain"], cwd=tmp_path, env=env)
    assert first.returncode == 4, first.stdout + first.stderr
    run_id = re.search(r"run (\w+) awaiting_approval", first.stdout).group(1)  # type: ignore[union-attr]
    assert docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={run_id}"}) == []
    assert run_console(["approve", run_id, "deploy", "-p", "reason=the fix"], cwd=tmp_path).returncode == 0
    resumed = run_console(["run", "--resume", run_id, "--progress", "plain"], cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    line = next(x for x in resumed.stdout.splitlines() if "deploying in" in x and "$(" not in x)
    assert line.endswith(f"because the fix by {USER}")
    resumed_id = re.search(r"run (\w+) succeeded", resumed.stdout).group(1)  # type: ignore[union-attr]
    assert docker_client.containers.list(all=True, filters={"label": f"io.pipekit.run={resumed_id}"}) == []
    row = run_console(["deployments"], cwd=tmp_path).stdout.splitlines()[1].split()
    assert row[0] == "production" and row[2] == resumed_id and row[4] == USER and row[-1] == "succeeded"


MATRIX = """\
import pipekit as pk

@pk.stage(matrix={"region": ["eu", "us"]}, approval=pk.Approval(message="Roll out?"))
def deploy(ctx):
    ctx.sh("echo rolled out to " + ctx.matrix["region"] + " by " + ctx.approval.by)
"""


def test_a_matrix_stages_name_approves_each_of_its_instances(tmp_path: Path, pipekit_runner: PipelineRunner) -> None:
    (tmp_path / "pipeline.py").write_text(MATRIX)
    pipekit_runner.base_dir = tmp_path
    waiting = pipekit_runner.run("pipeline.py")
    assert {s.status for s in waiting.stages.values()} == {"awaiting_approval"} and len(waiting.stages) == 2
    pipekit_runner.approve("deploy", by="alice")
    assert pipekit_runner.run("pipeline.py").status == "succeeded"

    assert run_console(["run", "--progress", "plain"], cwd=tmp_path).returncode == 4
    approved = run_console(["approve", "last", "deploy"], cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    assert "deploy[region=eu] in run" in approved.stdout and "deploy[region=us] in run" in approved.stdout
    resumed = run_console(["run", "--resume", "--progress", "plain"], cwd=tmp_path)
    assert resumed.returncode == 0 and resumed.stdout.count("rolled out to") == 4  # (command and output) x 2
    scripted = run_console(["run", "--progress", "plain", "--approve", "deploy"], cwd=tmp_path)
    assert scripted.returncode == 0 and f"rolled out to us by {USER}" in scripted.stdout
