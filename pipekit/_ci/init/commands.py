"""What each stage of a generated pipeline runs for a project, and why (the comment beside it).

A :class:`Plan` holds, per language, the image the lint and test stages use, the commands they
run, the JUnit report the tests write, and the command that smoke-tests the built image.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from pipekit._ci.init.project import Dockerfile, Project

__all__ = ["Plan", "Step", "plan_for", "smoke_command"]

REPORT = "reports/junit.xml"


@dataclass(frozen=True)
class Step:
    """One stage's commands: run in order, the last one the check itself."""

    commands: tuple[str, ...]
    why: tuple[str, ...]  # comment lines above the stage
    env: dict[str, str] = field(default_factory=dict)
    junit: str | None = None  # the report the last command writes


@dataclass(frozen=True)
class Plan:
    image: str
    image_why: str
    lint: Step | None
    test: Step | None


def _python(p: Project) -> Plan:
    facts = p.facts
    lint_cmd, lint_why = facts["lint"]
    tool = lint_cmd.split()[0]
    lint = Step(
        (f"pip install -q {tool}", lint_cmd),
        (f"Lint: {lint_why}.", f"Only {tool} is installed: linting needs none of the project's dependencies."),
    )
    test = None
    if p.tests:
        test = Step(
            (facts["install"], f"python -m pytest --ignore=test_pipeline.py --junitxml={REPORT}"),
            (
                "Tests: pytest (it runs unittest tests too), with the project and its test dependencies",
                f"installed; the JUnit report ({REPORT}) goes into the run's record (`pipekit show`).",
                "test_pipeline.py is left out: it tests this file, with pipekit, outside the image.",
            ),
            junit=REPORT,
        )
    why = f"Python {p.version}: " + (
        f"the lowest the project supports (requires-python {facts['requires']})"
        if facts["requires"]
        else "the version the project names (.python-version, the Dockerfile), else a current one"
    )
    return Plan(f"python:{p.version}-slim", why + ", so the code is checked where it must run.", lint, test)


JEST = ("jest-junit", "--ci --reporters=default --reporters=jest-junit")
MOCHA = ("mocha-junit-reporter", f"--reporter mocha-junit-reporter --reporter-options mochaFile={REPORT}")


def _node_test(facts: dict[str, Any], cd: str, install: str) -> Step | None:
    deps = set(facts["deps"])
    test_script = facts["scripts"].get("test", "")
    report = f"{cd}/{REPORT}" if cd else REPORT
    prefix = f"cd {cd} && " if cd else ""
    words = test_script.split()
    if "react-scripts" in words or "jest" in words or (not test_script and "jest" in deps):
        runner, (reporter, args), why = "jest", JEST, "jest; jest-junit writes the JUnit report pipekit reads"
    elif "mocha" in words or (not test_script and "mocha" in deps):
        runner, (reporter, args), why = "mocha", MOCHA, "mocha, with a reporter that writes the JUnit report"
    elif test_script:
        return Step(
            (install, f"{prefix}npm test"),
            (
                "Tests: package.json's test script. Its runner is not one pipekit knows a JUnit reporter for:",
                "add one and `ctx.junit(...)` to see each test in `pipekit show`.",
            ),
        )
    else:
        return None
    env = {"JEST_JUNIT_OUTPUT_DIR": "reports", "JEST_JUNIT_OUTPUT_NAME": "junit.xml"} if runner == "jest" else {}
    ci = "CI=true " if "react-scripts" in words else ""
    run = f"{prefix}{ci}npm test -- {args}" if test_script else f"{prefix}npx {runner} {args}"
    source = "package.json's test script, its own arguments kept" if test_script else f"{runner} is a dependency"
    return Step(
        (install, f"{prefix}npm install --no-save {reporter}", run),
        (f"Tests: {source}: {why}.",),
        env=env,
        junit=report,
    )


def _node(p: Project) -> Plan:
    facts = p.facts
    cd = str(facts["dir"])
    prefix = f"cd {cd} && " if cd else ""
    manager = facts["manager"]
    install = prefix + (
        "yarn install --frozen-lockfile"
        if manager == "yarn"
        else "corepack enable && pnpm install --frozen-lockfile"
        if manager == "pnpm"
        else "npm ci"
        if facts["lock"]
        else "npm install"
    )
    scripts: dict[str, str] = facts["scripts"]  # type: ignore[assignment]
    deps = set(facts["deps"])
    lint = None
    if "lint" in scripts:
        lint = Step((install, f"{prefix}npm run lint"), ("Lint: package.json's lint script.",))
    elif "eslint" in deps:
        lint = Step((install, f"{prefix}npx eslint ."), ("Lint: eslint is a dependency.",))
    elif "prettier" in deps:
        lint = Step(
            (install, f"{prefix}npx prettier --check ."), ("Lint: prettier is a dependency: the format is checked.",)
        )
    test = _node_test(facts, cd, install) if p.tests or scripts.get("test") else None
    return Plan(
        f"node:{p.version}",
        f"Node {p.version}: the version package.json's engines or the Dockerfile names, else a current one.",
        lint,
        test,
    )


def _go(p: Project) -> Plan:
    lint = Step(
        (
            "go vet ./...",
            'test -z "$(gofmt -l .)" || { gofmt -l .; echo "gofmt: these files are not formatted"; exit 1; }',
        ),
        ("Lint: go vet, and gofmt's check (what the Go toolchain has; add golangci-lint if you use it).",)
        + (
            (
                f"The Makefile's targets ({', '.join(p.make_targets)}) are not called:"
                " each needs its tools in the image.",
            )
            if p.make_targets
            else ()
        ),
    )
    test = Step(
        (f"go run gotest.tools/gotestsum@v1.12.0 --junitfile {REPORT} -- ./...",),
        ("Tests: go test through gotestsum, which writes the JUnit report pipekit reads.",),
        junit=REPORT,
    )
    return Plan(f"golang:{p.version}", f"Go {p.version}: the version go.mod names.", lint, test)


def _make(p: Project) -> Plan:
    lint = Step(("make lint",), ("Lint: the Makefile's lint target.",)) if "lint" in p.make_targets else None
    test = (
        Step(("make test",), ("Tests: the Makefile's test target (no JUnit report: add one and `ctx.junit`).",))
        if "test" in p.make_targets
        else None
    )
    return Plan(
        "buildpack-deps:bookworm", "No language was recognised: a Debian image with make and compilers.", lint, test
    )


def plan_for(p: Project) -> Plan:
    if p.language == "python":
        return _python(p)
    if p.language == "node":
        return _node(p)
    if p.language == "go":
        return _go(p)
    return _make(p)


def smoke_command(docker: Dockerfile) -> tuple[str | None, str]:
    """A quick command that proves the built image holds a working program, and why; None when the
    image has no shell to run one in (scratch, distroless)."""
    base = docker.base.lower()
    if base == "scratch" or "distroless" in base:
        return None, f"the image is FROM {docker.base}: it has no shell"
    words = list(docker.command)
    if words and words[0] in ("sh", "/bin/sh", "bash") and len(words) >= 3 and words[1] == "-c":
        words = shlex.split(words[2])
    if not words:
        return None, "the Dockerfile names no CMD or ENTRYPOINT"
    program = words[0].rsplit("/", 1)[-1]
    module = None
    if program.startswith("python"):
        rest = [w for w in words[1:] if not w.startswith("-")]
        if "-m" in words and words.index("-m") + 1 < len(words):
            module = words[words.index("-m") + 1]
        elif rest and rest[0].endswith(".py"):
            module = rest[0][:-3].replace("/", ".")
    elif program in ("gunicorn", "uvicorn", "hypercorn", "waitress-serve"):
        target = next((w for w in words[1:] if ":" in w and not w.startswith("-")), None)
        module = target.split(":")[0] if target else None
    elif program == "flask" and docker.env.get("FLASK_APP"):
        module = docker.env["FLASK_APP"].removesuffix(".py")
    if module and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", module):
        return (
            f"python -c 'import {module}'",
            f"the image's command runs {module}: it must import, with its dependencies",
        )
    if program == "node" and len(words) > 1 and words[1].endswith((".js", ".mjs", ".cjs")):
        return f"node --check {shlex.quote(words[1])}", f"the image's command runs {words[1]}: node checks it parses"
    if program == "nginx":
        return "nginx -t", "the image runs nginx: its configuration must be valid"
    if words[0].startswith(("/", "./")):
        return f"test -x {shlex.quote(words[0])}", f"the image's entry point {words[0]} must be there and executable"
    return f"command -v {shlex.quote(words[0])}", f"the image's command {words[0]} must be on its PATH"
