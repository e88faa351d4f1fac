"""``pipekit init --from github|gitlab``: a workflow's jobs as stages, best effort.

Each job becomes a stage: its container image (or the image its setup action names), its shell
steps (``run:`` / ``before_script:`` + ``script:``) as ``ctx.sh`` calls, its ``needs`` (GitLab:
the jobs of the stage before, when it names none). What has no pipekit form here (an action, an
expression ``${{ ... }}``, ``rules:``, services, a matrix) is kept as a TODO comment with its text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipekit._ci.init.render import comment, lit
from pipekit._ci.jenkins.steps import identifier

__all__ = ["Job", "from_github", "from_gitlab", "gitlab_variables", "render_jobs"]

FALLBACK_IMAGE = "ubuntu:24.04"
GITLAB_RESERVED = {
    "stages", "variables", "image", "services", "include", "default", "workflow",
    "before_script", "after_script", "cache", "pages",
}  # fmt: skip


class CiFileError(ValueError):
    """The CI file cannot be read as YAML of the expected shape."""


@dataclass
class Job:
    name: str
    image: str
    commands: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (command, env)
    notes: list[str] = field(default_factory=list)  # TODO comments above the stage
    body_notes: list[tuple[int, str]] = field(default_factory=list)  # (before command i, TODO)
    needs: list[str] = field(default_factory=list)
    branch: str | None = None


def _load(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CiFileError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    except yaml.YAMLError as e:
        raise CiFileError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CiFileError(f"{path} holds no mapping of jobs")
    return data


def _plain_env(env: Any, notes: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(env, dict):
        return out
    for key, value in env.items():
        text = "" if value is None else str(value)
        if "${{" in text or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
            notes.append(f"TODO: {where} env {key}={text}: an expression pipekit cannot evaluate")
        else:
            out[str(key)] = text
    return out


def _setup_image(uses: str, with_: Any) -> str | None:
    versions = {"setup-python": ("python-version", "python:{}-slim"), "setup-node": ("node-version", "node:{}"),
                "setup-go": ("go-version", "golang:{}")}  # fmt: skip
    for action, (key, image) in versions.items():
        if f"actions/{action}" in uses and isinstance(with_, dict):
            version = str(with_.get(key, "")).removesuffix(".x")
            if re.fullmatch(r"[0-9][0-9.]*", version):
                return image.format(version)
    return None


def _github_job(name: str, job: dict[str, Any]) -> Job:
    container = job.get("container")
    image = container.get("image") if isinstance(container, dict) else container
    out = Job(name=name, image=str(image) if isinstance(image, str) and "${{" not in image else "")
    if image and not out.image:
        out.notes.append(
            f"TODO: the container image {image} is an expression (a matrix?): the first choice is not taken"
        )
    if job.get("strategy"):
        out.notes.append("TODO: strategy/matrix: this stage runs once; pk.matrix runs a stage per value")
    if job.get("if"):
        out.notes.append(
            f"TODO: if: {job['if']}: a condition pipekit cannot read (when= takes pk.branch, pk.changed...)"
        )
    out.notes.append(f"runs-on: {job.get('runs-on')}: here, a container of the image below")
    env = _plain_env(job.get("env"), out.notes, "job")
    needs = job.get("needs") or []
    out.needs = [needs] if isinstance(needs, str) else [str(n) for n in needs]
    for step in job.get("steps") or []:
        if not isinstance(step, dict):
            continue
        label = str(step.get("name") or "")
        if "uses" in step:
            uses = str(step["uses"])
            found = _setup_image(uses, step.get("with"))
            if found and not out.image:
                out.image = found
            if uses.startswith("actions/checkout"):
                out.body_notes.append((len(out.commands), f"{uses}: not needed, the workspace is the checkout"))
            elif not found:
                out.body_notes.append(
                    (len(out.commands), f"TODO: uses {uses} ({label or 'a step'}): an action has no pipekit form")
                )
            continue
        run = str(step.get("run") or "")
        if not run.strip():
            continue
        step_env = {**env, **_plain_env(step.get("env"), out.notes, f"step {label!r}")}
        if "${{" in run:
            out.body_notes.append((len(out.commands), f"TODO: {label or 'a step'} uses ${{{{ }}}} expressions: {run}"))
            continue
        folder = step.get("working-directory")
        command = (
            f"cd {folder} && {run.strip()}" if isinstance(folder, str) and "\n" not in run.strip() else run.strip()
        )
        out.commands.append((command, step_env))
    return out


def from_github(path: Path) -> list[Job]:
    data = _load(path)
    jobs = data.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise CiFileError(f"{path} has no jobs")
    return [_github_job(str(name), job) for name, job in jobs.items() if isinstance(job, dict)]


def _image_name(value: Any) -> str:
    name = value.get("name") if isinstance(value, dict) else value
    return str(name) if isinstance(name, str) else ""


def _lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def _gitlab_job(name: str, job: dict[str, Any], data: dict[str, Any], variables: dict[str, str]) -> Job:
    found = data.get("default")
    default: dict[str, Any] = found if isinstance(found, dict) else {}
    image = _image_name(job.get("image") or default.get("image") or data.get("image"))
    out = Job(name=name, image="" if "$" in image else image)
    if "$" in image:
        out.notes.append(f"TODO: the image {image} names variables: set it by hand")
    for key in ("rules", "except", "services", "extends", "artifacts", "cache", "environment"):
        if key in job:
            out.notes.append(f"TODO: {key}: {job[key]}: not converted")
    only = job.get("only")
    branches = only if isinstance(only, list) else only.get("refs") if isinstance(only, dict) else None
    if isinstance(branches, list) and len(branches) == 1 and re.fullmatch(r"[A-Za-z0-9._/-]+", str(branches[0])):
        out.branch = str(branches[0])
    elif only is not None:
        out.notes.append(f"TODO: only: {only}: not converted")
    env = _plain_env(job.get("variables"), out.notes, "job")  # the pipeline's: VARIABLES, in every command
    before = _lines(job.get("before_script", default.get("before_script", data.get("before_script"))))
    for line in before + _lines(job.get("script")):
        out.commands.append((line, env))
    after = _lines(job.get("after_script", default.get("after_script", data.get("after_script"))))
    if after:
        out.notes.append("TODO: after_script (a stage's post= in pipekit): " + "; ".join(after))
    used = sorted(set(re.findall(r"\$\{?(CI_[A-Z0-9_]+)", " ".join(c for c, _ in out.commands))))
    if used:
        out.notes.append(f"TODO: GitLab's own variables are not set here: {', '.join(used)}")
    return out


def gitlab_variables(path: Path) -> dict[str, str]:
    """The pipeline's own ``variables:`` with plain values."""
    return _plain_env(_load(path).get("variables"), [], "pipeline")


def from_gitlab(path: Path) -> list[Job]:
    data = _load(path)
    variables = gitlab_variables(path)
    stages = [str(s) for s in data.get("stages") or ["build", "test", "deploy"]]
    jobs = {
        str(name): job
        for name, job in data.items()
        if isinstance(job, dict) and str(name) not in GITLAB_RESERVED and not str(name).startswith(".")
        and ("script" in job or "extends" in job)
    }  # fmt: skip
    if not jobs:
        raise CiFileError(f"{path} has no jobs")
    converted = []
    for name, job in jobs.items():
        out = _gitlab_job(name, job, data, variables)
        stage = str(job.get("stage", "test"))
        if "needs" in job:
            out.needs = [str(n.get("job") if isinstance(n, dict) else n) for n in job.get("needs") or []]
        elif stage in stages and stages.index(stage) > 0:
            earlier = stages[: stages.index(stage)]
            last = next(
                (s for s in reversed(earlier) if any(str(j.get("stage", "test")) == s for j in jobs.values())), None
            )
            out.needs = [n for n, j in jobs.items() if str(j.get("stage", "test")) == last]
        converted.append(out)
    return converted


def _env(env: dict[str, str], shared: bool) -> str:
    if not shared:
        return f", env={lit(env)}" if env else ""
    return f", env={{**VARIABLES, {lit(env)[1:-1]}}}" if env else ", env=VARIABLES"


def _stage_lines(job: Job, names: dict[str, str], fallback: str, shared: bool) -> list[str]:
    options = [f"image={lit(job.image or fallback)}"]
    needs = [names[n] for n in job.needs if n in names]
    if needs:
        options.append(f"needs=[{', '.join(needs)}]")
    if job.branch:
        options.append(f"when=pk.branch({lit(job.branch)})")
    lines = ["", "", *comment(f"{job.name}:", *job.notes)]
    lines += [f"@pk.stage({', '.join(options)})", f"def {names[job.name]}(ctx):"]
    notes = dict[int, list[str]]()
    for i, note in job.body_notes:
        notes.setdefault(i, []).append(note)
    for i, (command, env) in enumerate(job.commands):
        lines += comment(*notes.pop(i, []), indent="    ")
        lines.append(f"    ctx.sh({lit(command)}{_env(env, shared)})")
    lines += comment(*(n for rest in notes.values() for n in rest), indent="    ")
    if not job.commands:
        lines.append(f'    ctx.log.info("nothing converted", job={lit(job.name)})')
    return lines


def render_jobs(
    jobs: list[Job], source: str, name: str, fallback: str, variables: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """pipeline.py from ``jobs`` (the stages in the file's order; a need on a job defined later is
    kept as a TODO), and the TODOs, for the summary."""
    names: dict[str, str] = {}
    for job in jobs:
        base = identifier(job.name)
        base = base + "_" if base in ("ctx", "pk") else base
        unique, n = base, 2
        while unique in names.values():
            unique, n = f"{base}_{n}", n + 1
        names[job.name] = unique
    defined: set[str] = set()
    lines = [
        f'"""The pipeline of {name}, converted by `pipekit init --from` from {source}.',
        "",
        "Best effort: each job is a stage, its shell steps ctx.sh calls; what was not converted is a",
        'TODO comment at its place. `pipekit validate` checks it, `pytest test_pipeline.py` tests it."""',
        "",
        "import pipekit as pk",
    ]
    if variables:
        lines += [
            "",
            *comment(f"{source}'s variables, in every command's environment (a $NAME in them is not expanded)"),
        ]
        lines += [f"VARIABLES = {lit(variables)}"]
    for job in jobs:
        late = [n for n in job.needs if n in names and n not in defined]
        if late:
            job.notes.append(f"TODO: needs {', '.join(late)}, defined further down: move this stage below it")
            job.needs = [n for n in job.needs if n not in late]
        lines += _stage_lines(job, names, fallback, bool(variables))
        defined.add(job.name)
    todos = [f"{job.name}: {note}" for job in jobs for note in job.notes if note.startswith("TODO")]
    todos += [f"{job.name}: {note}" for job in jobs for _, note in job.body_notes if note.startswith("TODO")]
    return "\n".join(lines) + "\n", todos
