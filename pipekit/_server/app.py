"""The server's HTTP side (Starlette): webhooks, the JSON API under ``/api``, and the web view.

Every POST needs the server's token, reads too unless ``public_read = true`` (checked by
:class:`pipekit._server.auth.Auth`). Webhooks are checked with the project's secret instead
(GitHub's ``X-Hub-Signature-256``, GitLab's ``X-Gitlab-Token``), in constant time; a bad or
missing one is a 401 and starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from pipekit._server import pages
from pipekit._server.auth import Auth
from pipekit._server.config import Project, ServerConfig
from pipekit._server.gates import Asked, decide, deployments_json, gates_json
from pipekit._server.git import check_commit
from pipekit._server.limits import MAX_ID, BodyLimit, bounded, same
from pipekit._server.store import Store
from pipekit._server.triggers import Triggers
from pipekit._server.work import Work, history_of
from pipekit.exceptions import UsageError

__all__ = ["make_app"]

_URL_KEYS = ("clone_url", "ssh_url", "html_url", "git_http_url", "git_ssh_url", "url")


def _project_of(config: ServerConfig, request: Any, urls: list[str]) -> Project | None:
    name = request.query_params.get("project")
    if name:
        return config.project(name)
    wanted = {u.rstrip("/").removesuffix(".git") for u in urls if u}
    return next((p for p in config.projects if p.repo.rstrip("/").removesuffix(".git") in wanted), None)


class _Api:
    """The handlers of the webhooks and the JSON API."""

    def __init__(self, config: ServerConfig, store: Store, work: Work, triggers: Triggers) -> None:
        self.config, self.store, self.work, self.triggers = config, store, work, triggers
        self.auth = Auth(config.logins(), store, config.session_lifetime)
        self.pages = pages

    def denied(self) -> Response:
        return JSONResponse({"error": "a user's token is needed (Authorization: Bearer TOKEN)"}, status_code=401)

    async def hook(self, request: Request, kind: str) -> Response:
        body = await request.body()
        try:
            payload = await asyncio.to_thread(json.loads, body or b"{}")
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            return JSONResponse({"error": "a webhook's body is a JSON object"}, status_code=400)
        repo = payload.get("repository") or payload.get("project") or {}
        urls = [str(repo.get(k) or "") for k in _URL_KEYS] if isinstance(repo, dict) else []
        project = _project_of(self.config, request, urls)
        secret = project.secret(project.webhook_secret_env) if project else None
        if project is None or not secret:
            return JSONResponse({"error": "no project with a webhook secret matches this hook"}, status_code=401)
        if kind == "github":
            mac = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            ok = same(request.headers.get("x-hub-signature-256"), mac)
            event, delivery = request.headers.get("x-github-event", ""), request.headers.get("x-github-delivery")
        else:
            ok = same(request.headers.get("x-gitlab-token"), secret)
            event = "push" if request.headers.get("x-gitlab-event", "") == "Push Hook" else ""
            delivery = request.headers.get("x-gitlab-event-uuid") or request.headers.get("x-gitlab-webhook-uuid")
        if not ok:
            self.work.log(f"{kind} webhook for {project.name} refused: bad signature")
            return JSONResponse({"error": "bad signature"}, status_code=401)
        ref, sha = str(payload.get("ref", "")), str(payload.get("after") or payload.get("checkout_sha") or "")
        if event != "push" or not ref.startswith("refs/heads/") or not sha.strip("0"):
            return JSONResponse({"ignored": f"not a push to a branch ({event or 'no event'})"})
        if any(ord(c) < 32 or c == "\x7f" for c in ref):
            return JSONResponse({"error": "the pushed ref has control characters"}, status_code=400)
        if len(sha) not in (40, 64) or not sha.isascii() or not all(c in "0123456789abcdef" for c in sha):
            return JSONResponse({"error": f"the pushed commit is not a hex object name: {sha[:80]!r}"}, status_code=400)
        keys = [f"{kind}:{project.name}:body:{hashlib.sha256(body).hexdigest()}"]
        keys += [f"{kind}:{project.name}:delivery:{delivery[:200]}"] if delivery else []
        if not self.store.first_delivery(keys):
            self.work.log(f"{kind} webhook for {project.name} ignored: delivery {delivery or '(body)'} seen before")
            return JSONResponse({"ignored": "this delivery was received before (a replay starts nothing)"})
        branch = ref.removeprefix("refs/heads/")
        run, why = await asyncio.to_thread(self.triggers.push, project, branch, sha, "push", f"webhook:{kind}")
        return JSONResponse({"run": run} if run else {"ignored": why}, status_code=202 if run else 200)

    async def github(self, request: Request) -> Response:
        return await self.hook(request, "github")

    async def gitlab(self, request: Request) -> Response:
        return await self.hook(request, "gitlab")

    async def list_runs(self, request: Request) -> Response:
        if not self.auth.may_read(request, self.config.public_read):
            return self.denied()
        q = request.query_params
        limit = bounded(q.get("limit"), 100, 1, 1000)
        if limit is None:
            return JSONResponse({"error": "limit takes a whole number from 1 to 1000"}, status_code=400)
        rows = self.store.runs(q.get("project"), q.get("branch"), q.get("status"), limit)
        return JSONResponse([r.to_json() for r in rows])

    def _found(self, request: Request) -> Any:
        run = int(request.path_params["id"])
        return self.store.get(run) if 0 < run <= MAX_ID else None

    async def one_run(self, request: Request) -> Response:
        if not self.auth.may_read(request, self.config.public_read):
            return self.denied()
        run = self._found(request)
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        gates = await asyncio.to_thread(gates_json, run)
        return JSONResponse({**run.to_json(), **self.pages.stages_json(run), "gates": gates})

    async def log(self, request: Request) -> Response:
        if not self.auth.may_read(request, self.config.public_read):
            return self.denied()
        run = self._found(request)
        history = history_of(run.workspace) if run and run.run_id else None
        if history is None:
            return PlainTextResponse("", status_code=404 if run is None else 200)
        try:
            stage = request.query_params.get("stage")
            names = [stage] if stage else [s.name for s in history.stages(run.run_id)]
            text = "".join(_read(history.log_path(run.run_id, n)) for n in names)
        finally:
            history.close()
        return PlainTextResponse(text)

    async def events(self, request: Request) -> Response:
        from starlette.responses import StreamingResponse

        if not self.auth.may_read(request, self.config.public_read):
            return self.denied()
        run = self._found(request)
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(self.pages.follow(self.store, run.id), media_type="text/event-stream", headers=headers)

    async def cancel(self, request: Request) -> Response:
        if not await self.auth.may_act(request):
            return self.denied()
        run = self._found(request)
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        ok = self.work.cancel(run.id, why="cancelled by a user")
        return self.pages.after_action(request, {"cancelled": ok}, run.id)

    async def me(self, request: Request) -> Response:
        user = self.auth.reader(request)
        if user is None:
            return self.denied()
        return JSONResponse({"user": user.name, "groups": list(user.groups)})

    async def approvals(self, request: Request) -> Response:
        """``POST /api/runs/{id}/approvals``: the user's decision on a gate, from a form or JSON."""
        user = await self.auth.may_act(request)
        if user is None:
            return self.denied()
        run = self._found(request)
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        asked = await _asked(request)
        if isinstance(asked, Response):
            return asked
        status, answer = await asyncio.to_thread(decide, self.work, user, run, asked)
        return self.pages.after_action(request, answer, run.id, status)

    async def deployments(self, request: Request) -> Response:
        if not self.auth.may_read(request, self.config.public_read):
            return self.denied()
        limit = bounded(request.query_params.get("limit"), 100, 1, 1000)
        if limit is None:
            return JSONResponse({"error": "limit takes a whole number from 1 to 1000"}, status_code=400)
        environment = request.query_params.get("environment") or None
        rows = await asyncio.to_thread(deployments_json, self.store, self.config, environment, limit)
        return JSONResponse(rows)

    async def rerun(self, request: Request) -> Response:
        user = await self.auth.may_act(request)
        if user is None:
            return self.denied()
        run = self._found(request)
        project = self.config.project(run.project) if run else None
        if run is None or project is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        new = self.work.submit(project, run.branch, run.commit, "rerun", dict(run.params), by=user.name)
        return self.pages.after_action(request, {"run": new}, new)

    async def trigger(self, request: Request) -> Response:
        user = await self.auth.may_act(request)
        if user is None:
            return self.denied()
        project = self.config.project(request.path_params["name"])
        if project is None:
            return JSONResponse({"error": "no such project"}, status_code=404)
        asked = await _manual(request, project)
        if isinstance(asked, Response):
            return asked
        branch, params, commit = asked
        if commit:  # the full name, as statuses and PIPEKIT_COMMIT need it
            try:
                sha = await asyncio.to_thread(self.work.git.resolve, project, commit)
            except UsageError as e:
                return JSONResponse({"error": str(e)}, status_code=404)
        else:
            try:
                sha = (await asyncio.to_thread(self.work.git.heads, project)).get(branch) or ""
            except Exception as e:
                return JSONResponse({"error": str(e)}, status_code=502)
        if not sha:
            return JSONResponse({"error": f"{project.name} has no branch {branch}"}, status_code=404)
        run = self.work.submit(project, branch, sha, "manual", params, by=user.name)
        return self.pages.after_action(request, {"run": run}, run, 202)  # a form goes to the run's page


async def _manual(request: Request, project: Project) -> tuple[str, dict[str, str], str] | Response:
    """A manual run's branch, params and commit from its JSON body, or the 400 that says what is wrong."""
    body: Any = {}
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):  # the page's form
        from pipekit._server.auth import form

        fields = await form(request)
        body = {
            "branch": fields.get("branch"),
            "params": {k[6:]: v for k, v in fields.items() if k.startswith("param.")},
        }
    elif request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    params = (body.get("params") or {}) if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(params, dict):
        return JSONResponse({"error": 'the body is a JSON object: {"branch", "params": {...}, "commit"}'}, 400)
    branch = str(body.get("branch") or project.branches[0])
    commit = str(body.get("commit") or "")
    if branch.startswith("-") or any(ord(c) < 32 for c in branch):
        return JSONResponse({"error": f"not a branch name: {branch[:80]!r}"}, status_code=400)
    if commit:
        try:
            check_commit(commit)
        except UsageError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
    return branch, {str(k): str(v) for k, v in params.items()}, commit


async def _asked(request: Request) -> Asked | Response:
    """A decision from a form (``stage``, ``decision`` approve/reject, ``reason``, ``param.NAME``) or
    JSON (``{"stage", "decision", "reason", "params": {...}}``), or the 400 that says what is wrong."""
    from pipekit._server.auth import form

    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        fields = await form(request)
        body: Any = {k: v for k, v in fields.items() if not k.startswith("param.")}
        body["params"] = {k[6:]: v for k, v in fields.items() if k.startswith("param.")}
    else:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
    params = body.get("params") or {} if isinstance(body, dict) else None
    stage, verdict = (body.get("stage"), body.get("decision")) if isinstance(body, dict) else (None, None)
    if not isinstance(params, dict) or not isinstance(stage, str) or verdict not in ("approve", "reject"):
        return JSONResponse(
            {"error": 'the body is {"stage": NAME, "decision": "approve" or "reject", "params": {...}, "reason": ...}'},
            status_code=400,
        )
    reason = body.get("reason")
    origin = request.client.host if request.client else ""
    return Asked(
        stage, verdict == "approve", {str(k): str(v) for k, v in params.items()}, str(reason or "") or None, origin
    )


def make_app(config: ServerConfig, store: Store, work: Work, triggers: Triggers, on_shutdown: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    api = _Api(config, store, work, triggers)
    routes = [
        Route("/hooks/github", api.github, methods=["POST"]),
        Route("/hooks/gitlab", api.gitlab, methods=["POST"]),
        Route("/api/me", api.me),
        Route("/api/runs", api.list_runs),
        Route("/api/runs/{id:int}", api.one_run),
        Route("/api/runs/{id:int}/log", api.log),
        Route("/api/runs/{id:int}/events", api.events),
        Route("/api/runs/{id:int}/cancel", api.cancel, methods=["POST"]),
        Route("/api/runs/{id:int}/rerun", api.rerun, methods=["POST"]),
        Route("/api/runs/{id:int}/approvals", api.approvals, methods=["POST"]),
        Route("/api/deployments", api.deployments),
        Route("/api/projects/{name}/runs", api.trigger, methods=["POST"]),
        *api.pages.routes(config, store, api.auth),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(on_shutdown)

    return BodyLimit(Starlette(routes=routes, lifespan=lifespan), config.max_webhook_body)


def _read(path: Any) -> str:
    try:
        return str(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""
