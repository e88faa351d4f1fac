"""Output in the CI a run is in: GitHub Actions, GitLab CI or Jenkins (``--ci``, detected).

- **github**: each stage's log in a ``::group::`` printed when the stage ends (stages run in
  parallel; a group cannot interleave with another), a failed stage as an ``::error`` annotation on
  its ``file:line`` in pipeline.py, and every secret value registered with ``::add-mask::`` before
  anything can print it. The Markdown summary goes to ``$GITHUB_STEP_SUMMARY`` (``_ci.junit``).
- **gitlab**: each stage in a collapsible section (``section_start``/``section_end``), printed when
  it ends; a failed stage's section is open.
- **jenkins**: the plain lines, each prefixed ``[stage]``, as they come.

Formats: GitHub's workflow commands (docs.github.com, "Workflow commands for GitHub Actions"),
GitLab's custom collapsible sections (docs.gitlab.com, "CI/CD job logs").
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipekit._console.log import ConsoleRenderer, EventDict
from pipekit._core.streams import Captured
from pipekit._core.util import slug

__all__ = ["CI_NAMES", "GITLAB_SECTION", "detect", "gh_data", "gh_property", "how_to_approve", "renderer_for"]

CI_NAMES = ("github", "gitlab", "jenkins", "none")
ESC = "\x1b"


def detect(environ: Mapping[str, str]) -> str:
    """The CI a run is in, from the variables each CI sets in every job."""
    if environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    if environ.get("GITLAB_CI"):
        return "gitlab"
    if environ.get("JENKINS_URL"):
        return "jenkins"
    return "none"


def gh_data(text: str) -> str:
    """A workflow command's message, escaped as the runner expects."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def gh_property(text: str) -> str:
    """A workflow command's property value (``file=...``), escaped as the runner expects."""
    return gh_data(text).replace(":", "%3A").replace(",", "%2C")


def GITLAB_SECTION(edge: str, when: int, name: str, header: str = "", collapsed: bool = False) -> str:  # noqa: N802
    """A GitLab section marker: ``edge`` is ``start`` or ``end``."""
    options = "[collapsed=true]" if collapsed and edge == "start" else ""
    return f"{ESC}[0Ksection_{edge}:{when}:{name}{options}\r{ESC}[0K{header}"


def how_to_approve(run_id: str, stage: str) -> str:
    """What to do about a gate a run in a CI left awaiting approval (docs/approvals.md#in-a-ci)."""
    return (
        f"approve with `pipekit approve {run_id} {stage}` where the run's .pipekit/ is, then `pipekit run --resume"
        f" {run_id}`; or run this job again with PIPEKIT_APPROVE={stage} (the --approve option)"
    )


class JenkinsRenderer(ConsoleRenderer):
    """The console lines with a ``[stage]`` prefix, the way Jenkins' own steps print."""

    def _prefix(self, stage: str) -> str:
        return f"[{stage}]"


class GroupedRenderer(ConsoleRenderer):
    """Each stage's lines kept (on disk past a MiB) until the stage ends, then printed as one
    group (github) or section (gitlab)."""

    def __init__(self, ci: str, locations: Mapping[str, str], clock: Callable[[], float] = time.time) -> None:
        super().__init__(colour=False)
        self.ci = ci
        self.locations = locations
        self._clock = clock
        self._kept: dict[str, Captured] = {}
        self._begun: dict[str, int] = {}
        self._run_id = "RUN"

    def _keep(self, stage: str, text: str) -> str:
        kept = self._kept.setdefault(stage, Captured())
        kept.write((text + "\n").encode())
        return ""  # nothing printed now (the writer skips empty messages)

    def __call__(self, logger: Any, name: str, ed: EventDict) -> str:
        stage, event = ed.get("stage"), ed.get("event")
        if stage is None:
            if event == "run started":
                self._run_id = str(ed.get("run_id") or self._run_id)
            return super().__call__(logger, name, ed)
        if event == "stage started":
            self._begun[stage] = int(self._clock())
            return super().__call__(logger, name, ed)
        if event == "stage finished":
            return self._finished_block(stage, ed)
        if event == "output":
            return self._keep(stage, str(ed.get("line", "")))
        if event == "command finished":
            return ""
        if event == "command":
            return self._keep(stage, "$ " + "\n  ".join(str(ed.get("command", "")).splitlines()))
        ed = dict(ed)
        ed.pop("stage")
        return self._keep(stage, super().__call__(logger, name, ed))

    def batch_lines(self, stage: str, _stream: str, lines: list[str]) -> str:
        return self._keep(stage, "\n".join(lines))

    def _finished_block(self, stage: str, ed: EventDict) -> str:
        status = str(ed.get("status", ""))
        error = ed.pop("error", None)
        head = self._finished(stage, ed)  # without the error: it follows the group
        kept = self._kept.pop(stage, None)
        body = kept.text().rstrip("\n") if kept is not None else ""
        started = self._begun.pop(stage, int(self._clock()))
        lines = []
        if not body:  # nothing to fold away: the stage's one line
            lines.append(head)
        elif self.ci == "github":
            lines += [f"::group::{head}", body, "::endgroup::"]
        else:
            key = f"pipekit_{slug(stage)}"
            collapsed = status not in ("failed", "interrupted")
            lines += [
                GITLAB_SECTION("start", started, key, head, collapsed),
                body,
                GITLAB_SECTION("end", int(self._clock()), key),
            ]
        if error:
            lines += [f"{self._prefix(stage)}   {line}" for line in str(error).splitlines()]
            if self.ci == "github":
                lines.append(self._annotation(stage, str(error)))
        if status == "awaiting_approval":
            hint = how_to_approve(self._run_id, stage)
            if self.ci == "github":
                lines.append(f"::notice title={gh_property(f'pipekit: {stage} awaits approval')}::{gh_data(hint)}")
            else:  # an open section of its own, so that it stands out in the job's log
                now, key = int(self._clock()), f"pipekit_approval_{slug(stage)}"
                head = f"{self._prefix(stage)} awaits approval"
                lines += [GITLAB_SECTION("start", now, key, head), f"  {hint}", GITLAB_SECTION("end", now, key)]
        return "\n".join(lines)

    def _annotation(self, stage: str, error: str) -> str:
        location = self.locations.get(stage, "")
        file, _, line = location.rpartition(":")
        props = [f"title={gh_property(f'pipekit: stage {stage} failed')}"]
        if file and line.isdigit():
            root = os.environ.get("GITHUB_WORKSPACE") or os.getcwd()
            shown = os.path.relpath(file, root) if os.path.isabs(file) and file.startswith(root) else file
            props = [f"file={gh_property(shown)}", f"line={line}", *props]
        first = next((line for line in error.splitlines() if line.strip()), error)
        return f"::error {','.join(props)}::{gh_data(first)}"


def renderer_for(ci: str, locations: Mapping[str, str]) -> ConsoleRenderer | None:
    """The console renderer of a CI; None for ``none`` (pipekit's own console)."""
    if ci == "jenkins":
        return JenkinsRenderer(colour=False)
    if ci in ("github", "gitlab"):
        return GroupedRenderer(ci, locations)
    return None


def add_masks(write: Callable[[str], None], values: list[str]) -> None:
    """Register secret values with GitHub's runner (``::add-mask::``), one line each; written
    straight to the output, never through the log (where they would be masked, and recorded)."""
    lines = [f"::add-mask::{gh_data(part)}" for value in values for part in value.splitlines() or [value]]
    if lines:
        write("\n".join(line for line in lines if line.strip() != "::add-mask::"))
