"""Commit statuses: pending, success or failure of a run, reported back to GitHub or GitLab (a run
whose gate awaits approval is ``pending``, "awaiting approval: STAGE").

GitHub: ``POST {api}/repos/{owner}/{repo}/statuses/{sha}`` with a bearer token. GitLab:
``POST {api}/projects/{id}/statuses/{sha}`` with a ``PRIVATE-TOKEN``. A status that cannot be
sent is a line in the server's log; it never changes the run.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable

from pipekit._server.config import Project

__all__ = ["report_status"]

GITHUB = {
    "pending": "pending", "running": "pending", "awaiting_approval": "pending", "succeeded": "success",
    "failed": "failure",
}  # fmt: skip
GITLAB = {
    "pending": "pending", "running": "running", "awaiting_approval": "pending", "succeeded": "success",
    "failed": "failed", "error": "failed",
}  # fmt: skip


def _forge(project: Project) -> str:
    where = f"{project.status_api or ''} {project.repo}".lower()
    return "gitlab" if "gitlab" in where or "/api/v4" in where else "github"


def _path(project: Project) -> str:
    """``owner/repo`` (GitHub) or the project path (GitLab) from the repository's address."""
    m = re.search(r"(?:[:/])([^:/]+/[^/]+?)(?:\.git)?/?$", project.repo.split("://", 1)[-1].split("@", 1)[-1])
    return m.group(1) if m else project.name


def report_status(
    project: Project,
    sha: str,
    state: str,
    url: str,
    description: str,
    log: Callable[[str], None],
) -> None:
    token = project.secret(project.status_token_env)
    if not token:
        return
    kind = _forge(project)
    path = project.status_repo or _path(project)
    if kind == "github":
        value = GITHUB.get(state, "error")
        api = (project.status_api or "https://api.github.com").rstrip("/")
        target = f"{api}/repos/{path}/statuses/{sha}"
        body = {
            "state": value,
            "target_url": url,
            "description": description[:140],
            "context": f"pipekit/{project.name}",
        }
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
    else:
        value = GITLAB.get(state, "canceled")
        api = (project.status_api or "https://gitlab.com/api/v4").rstrip("/")
        target = f"{api}/projects/{urllib.parse.quote(path, safe='')}/statuses/{sha}"
        body = {"state": value, "target_url": url, "description": description[:140], "name": f"pipekit/{project.name}"}
        headers = {"PRIVATE-TOKEN": token}
    request = urllib.request.Request(
        target, data=json.dumps(body).encode(), headers={**headers, "Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except Exception as e:  # a status is a courtesy: the run's outcome stands
        log(f"commit status {value} for {project.name} {sha[:12]} not sent to {api}: {e}")
