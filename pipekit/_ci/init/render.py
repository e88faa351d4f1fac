"""The files ``pipekit init`` writes, as text: pipeline.py (each choice explained in a comment),
test_pipeline.py (two tests on the fake backend) and the ``[tool.pipekit]`` table.

Every value from the project reaches the files only as a Python literal (``ast.unparse``) or a
comment stripped of line breaks, so no file name or script can change the code around it.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from collections.abc import Iterable

from pipekit._ci.init.commands import Plan, Step, plan_for, smoke_command
from pipekit._ci.init.project import Project

__all__ = ["comment", "lit", "pipekit_table", "render_pipeline", "render_tests"]

DEPLOY_IMAGE = "alpine:3.20"
SECRETS = {"REGISTRY_USER": "ci", "REGISTRY_PASSWORD": "not-a-real-password"}
JUNIT_OK = '<testsuite name="tests" tests="1"><testcase classname="tests" name="test_ok"/></testsuite>'
JUNIT_FAILED_PARTS = (
    '<testsuite name="tests" tests="1" failures="1">',
    '<testcase classname="tests" name="test_broken"><failure message="assert 1 == 2"/></testcase></testsuite>',
)


def lit(value: object) -> str:
    """``value`` as a Python literal (strings double-quoted, as JSON writes them: valid Python too)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{lit(k)}: {lit(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(lit(v) for v in value)
        return (
            f"({inner},)"
            if isinstance(value, tuple) and len(value) == 1
            else f"({inner})"
            if isinstance(value, tuple)
            else f"[{inner}]"
        )
    assert value is None or isinstance(value, (bool, int, float)), value
    return ast.unparse(ast.Constant(value))


def comment(*lines: str, indent: str = "") -> list[str]:
    """Comment lines (wrapped at 100 characters), each stripped of anything that would end it."""
    out = []
    for line in lines:
        for part in str(line).splitlines() or [""]:
            safe = "".join(c if c.isprintable() else " " for c in part).rstrip()
            wrapped = textwrap.wrap(safe, 98 - len(indent), break_long_words=False, break_on_hyphens=False) or [""]
            out += [f"{indent}# {w}".rstrip() for w in wrapped]
    return out


def _docstring(p: Project, extra: Iterable[str] = ()) -> list[str]:
    found = ", ".join(p.found) or "nothing pipekit recognises"
    text = [
        *textwrap.wrap(f"The pipeline of {p.name}, written by `pipekit init` from what it found: {found}.", 96),
        "",
        "`pipekit run` runs it (`pipekit run test` just the tests and what they need), `pipekit plan`",
        "says what a run would do, `pytest test_pipeline.py` tests it without an engine.",
        *extra,
    ]
    body = "\n".join(text).replace("\\", "/").replace('"""', "'''")
    return ['"""' + body + '\n"""', ""]


def _call(head: str, args: list[str], indent: str) -> list[str]:
    """``head(args)`` on one line, or one argument a line when that is longer than 100 characters."""
    line = f"{indent}{head}({', '.join(args)})"
    if len(line) <= 100:
        return [line]
    return [f"{indent}{head}(", *(f"{indent}    {a}," for a in args), f"{indent})"]


def _step_body(step: Step, indent: str = "    ") -> list[str]:
    lines = []
    for command in step.commands[:-1]:  # (the env is the check's own: its reporter's settings)
        lines.append(f"{indent}ctx.sh({lit(command)})")
    last = step.commands[-1]
    if step.junit is None:
        return lines + _call("ctx.sh", [lit(last), *([f"env={lit(step.env)}"] if step.env else [])], indent)
    args = [lit(last), *([f"env={lit(step.env)}"] if step.env else []), "check=False"]
    lines += [
        *_call("result = ctx.sh", args, indent),
        *comment(
            "The report first: each failed test is named in the run's record, then the stage fails.", indent=indent
        ),
        f"{indent}ctx.junit({lit(step.junit)})",
        f"{indent}if result.exit_code != 0:",
        f'{indent}    raise pk.StageFailed(f"the tests exited with {{result.exit_code}}", stage=ctx.stage)',
    ]
    return lines


def _stage(
    name: str, decorator: str, signature: str, why: Iterable[str], body: list[str], returns: str = ""
) -> list[str]:
    head = f"def {name}({signature})" + (f" -> {returns}" if returns else "") + ":"
    return ["", "", *comment(*why), f"@pk.stage({decorator})" if decorator else "@pk.stage", head, *body]


def _lint_test(p: Project, plan: Plan) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    checks = []
    for name, step in (("lint", plan.lint), ("test", plan.test)):
        if step is None:
            continue
        checks.append(name)
        lines += _stage(name, "image=TOOLS", "ctx", step.why, _step_body(step))
    return lines, checks


def _build_smoke(p: Project, checks: list[str]) -> list[str]:
    assert p.dockerfile is not None
    needs = f"needs=[{', '.join(checks)}]" if checks else ""
    lines = _stage(
        "build",
        needs,
        "ctx",
        [
            "The image, from the Dockerfile, once lint and tests passed (.dockerignore is honoured, and",
            "--image-map reaches the Dockerfile's FROM).",
        ],
        ['    return ctx.docker.build(".", tag=f"{IMAGE}:latest")'],
        returns="pk.Image",
    )
    command, why = smoke_command(p.dockerfile)
    if command is None:
        body = [
            *comment(f"TODO: {why}: start the image as a service or with ctx.docker.run and call it.", indent="    "),
            '    ctx.log.info("smoke test to write", image=build.ref)',
        ]
        return lines + _stage("smoke", "", "ctx, build: pk.Image", [f"The built image, tried: {why}."], body)
    body = [f"    ctx.sh({lit(command)})"]
    why_lines = [
        f"The built image, tried before it goes anywhere: {why}.",
        "It runs in the image itself without the checkout mounted, so it tests what the image holds.",
    ]
    return lines + _stage("smoke", "image=build, workspace=False", "ctx", why_lines, body)


def _push_deploy(p: Project, registry: str | None, after: list[str]) -> list[str]:
    lines: list[str] = []
    needs = f"needs=[{', '.join(after)}]" if after else ""
    if registry is not None:
        body = [
            '    ref = f"{ctx.params.registry}/{IMAGE}:latest"',
            '    login = pk.Credentials(username=pk.secret("REGISTRY_USER"), password=pk.secret("REGISTRY_PASSWORD"))',
            "    digest = ctx.docker.push(build, ref, credentials=login)",
            '    return f"{ctx.params.registry}/{IMAGE}@{digest}"',
        ]
        why = [
            "The image, pushed once the smoke test passed; the login comes from the secrets REGISTRY_USER",
            "and REGISTRY_PASSWORD (the environment, or --secrets-file), never from this file.",
        ]
        lines += _stage("push", needs, "ctx, build: pk.Image", why, body, returns="str")
        deploy_needs, signature, what = "", "ctx, push: str", "{push}"
    else:
        deploy_needs, signature = needs, "ctx"
        what = "{IMAGE}:latest" if p.dockerfile is not None else "{ctx.run_id}"
    gate = f"image=DEPLOY, when=pk.branch(BRANCH){', ' + deploy_needs if deploy_needs else ''}"
    body = [
        *comment("TODO: your deploy command (kubectl, ssh, a webhook...) instead of this line.", indent="    "),
        f'    ctx.sh(f"echo deploying {what}")',
    ]
    why = [f"Deploy: only on {p.branch}, the default branch (`pipekit run --branch {p.branch}` on a laptop)."]
    return lines + _stage("deploy", gate, signature, why, body)


def render_pipeline(p: Project, registry: str | None) -> str:
    """pipeline.py for project ``p`` (pushing to ``registry`` when given)."""
    plan = plan_for(p)
    lines = _docstring(p) + ["import pipekit as pk", ""]
    lines += comment(plan.image_why) + [f"TOOLS = {lit(plan.image)}"]
    lines += (
        comment(
            "The name of the image the Dockerfile builds"
            + (" (the project's name)." if p.facts.get("name") else " (the folder's name).")
        )
        if p.dockerfile
        else []
    )
    lines += [f"IMAGE = {lit(p.name)}"] if p.dockerfile else []
    lines += comment("The branch deploys come from: the repository's default branch.") + [f"BRANCH = {lit(p.branch)}"]
    lines += comment("The deploy stage's image: small, with a shell.") + [f"DEPLOY = {lit(DEPLOY_IMAGE)}"]
    if registry is not None and p.dockerfile is not None:
        lines += [
            "REGISTRY = pk.param("
            + f"{lit('registry')}, default={lit(registry)}, help={lit('where push sends the image')})"
        ]
    stages, checks = _lint_test(p, plan)
    lines += stages
    after = checks
    if p.dockerfile is not None:
        lines += _build_smoke(p, checks)
        after = ["smoke"]
    lines += _push_deploy(p, registry if p.dockerfile is not None else None, after)
    return "\n".join(lines) + "\n"


def _order(p: Project, registry: str | None) -> tuple[str, ...]:
    plan = plan_for(p)
    names = [n for n, s in (("lint", plan.lint), ("test", plan.test)) if s is not None]
    if p.dockerfile is not None:
        names += ["build", "smoke"] + (["push"] if registry is not None else [])
    return (*names, "deploy")


def render_tests(p: Project, registry: str | None) -> str:
    """test_pipeline.py: the default branch runs everything and deploys; a failing check stops
    what comes after it, and another branch never deploys."""
    plan = plan_for(p)
    registry = registry if p.dockerfile is not None else None
    order = _order(p, registry)
    check = plan.test or plan.lint
    secrets = ", secrets=SECRETS" if registry is not None else ""
    lines = [
        '"""Tests of pipeline.py on pipekit\'s fake backend: no engine, no network (`pytest test_pipeline.py`).',
        "",
        "Written by `pipekit init`: change them with the pipeline. A command no test scripts succeeds",
        'with no output; `pipekit_runner.respond(...)` scripts one (its exit code, output and files)."""',
        "",
    ]
    if registry is not None:
        lines += [f"SECRETS = {lit(SECRETS)}"]
    if check is not None and check.junit is not None:
        lines += [
            f"JUNIT_OK = {lit(JUNIT_OK)}",
            "JUNIT_FAILED = (",
            *(f"    {lit(part)}" for part in JUNIT_FAILED_PARTS),
            ")",
        ]
    first = ["", "", "def test_the_default_branch_runs_every_stage_and_deploys(pipekit_runner):"]
    if check is not None and check.junit is not None:
        first += [
            "    pipekit_runner.respond(",
            f"        {lit(check.commands[-1])}, files={{{lit(check.junit)}: JUNIT_OK}}",
            "    )",
        ]
    first += [
        f'    result = pipekit_runner.run("pipeline.py", branch={lit(p.branch)}{secrets})',
        '    assert result.status == "succeeded", result.status.explain()',
        f"    assert result.order == {lit(order)}",
        '    assert result.stages["deploy"].status == "succeeded"',
    ]
    if p.dockerfile is not None:
        first.append(f"    assert result.built == [{lit(p.name + ':latest')}]")
    if registry is not None:
        first.append(f"    assert result.pushed == [{lit(registry + '/' + p.name + ':latest')}]")
    lines += first + ["", ""]
    return "\n".join(lines + _second_test(p, plan, secrets)) + "\n"


def _second_test(p: Project, plan: Plan, secrets: str) -> list[str]:
    check = plan.test or plan.lint
    if check is None:
        return [
            "def test_another_branch_never_deploys(pipekit_runner):",
            f'    result = pipekit_runner.run("pipeline.py", branch="feature/x"{secrets})',
            '    assert result.stages["deploy"].status == "skipped"',
        ]
    name = "test" if plan.test is not None else "lint"
    files = f", files={{{lit(check.junit)}: JUNIT_FAILED}}" if check.junit is not None else ""
    lines = [
        f"def test_a_failing_{name}_stops_what_follows_and_another_branch_never_deploys(pipekit_runner):",
        "    pipekit_runner.respond(",
        f"        {lit(check.commands[-1])}, exit_code=1{files}",
        "    )",
        f'    result = pipekit_runner.run("pipeline.py", branch="feature/x"{secrets})',
        '    assert result.status == "failed" and result.exit_code == 1',
        f'    assert result.stages[{lit(name)}].status == "failed"',
        '    assert result.stages["deploy"].status == "skipped"',
    ]
    if check.junit is not None:
        lines.append('    assert "test_broken" in result.stages["test"].error')
    if p.dockerfile is not None:
        lines.append("    assert result.built == [] and result.pushed == []")
    return lines


def pipekit_table(registry: str | None) -> str:
    """The ``[tool.pipekit]`` table: the project's defaults for ``pipekit run`` (a command-line
    option or a PIPEKIT_* variable wins)."""
    lines = [
        "[tool.pipekit]",
        "# Written by `pipekit init`: this project's defaults for `pipekit run` (an option on the command",
        '# line or a PIPEKIT_* variable wins). See docs/cli.md, "Defaults".',
        "fail-fast = true  # a failed stage stops the stages still running: the run ends sooner",
        'timeout = "30m"  # a run that hangs is stopped, and its containers removed',
    ]
    if registry is not None:
        lines.append(f"params = {{ registry = {_toml_str(registry)} }}  # where `push` sends the image")
    lines += [
        "# Where nothing can be pulled, map the images the pipeline names to ones you have:",
        '# image-map = { "python:3.12-slim" = "registry.internal/python:3.12-slim" }',
    ]
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return '"' + re.sub(r'["\\\x00-\x1f\x7f]', lambda m: "\\u%04x" % ord(m.group()), value) + '"'
