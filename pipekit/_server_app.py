"""The server's HTTP side (Starlette): webhooks, the JSON API under ``/api``, and the web view.

Every POST needs the server's token: ``Authorization: Bearer TOKEN``, or the session cookie a
``POST /login`` sets (``HttpOnly``, ``SameSite=Strict``) together with the CSRF token the pages
send with each form. Reads need it too unless ``public_read = true``. Webhooks are checked with the
project's secret instead (GitHub's ``X-Hub-Signature-256``, GitLab's ``X-Gitlab-Token``), in
constant time; a bad or missing one is a 401 and starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from pipekit._server_config import Project, ServerConfig
from pipekit._server_store import Store
from pipekit._server_triggers import Triggers
from pipekit._server_work import Work, history_of

__all__ = ["make_app"]

COOKIE = "pipekit_session"


class Auth:
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def _mac(self, text: str) -> str:
        return hmac.new(self._token, text.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        nonce = secrets.token_hex(16)
        return f"{nonce}.{self._mac('session:' + nonce)}"

    def session_ok(self, cookie: str | None) -> bool:
        nonce, _, mac = (cookie or "").partition(".")
        return bool(nonce) and hmac.compare_digest(mac, self._mac("session:" + nonce))

    def csrf(self, cookie: str) -> str:
        return self._mac("csrf:" + cookie)

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def bearer_ok(self, request: Any) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and self.token_ok(header[7:])

    def may_read(self, request: Any, public: bool) -> bool:
        return public or self.bearer_ok(request) or self.session_ok(request.cookies.get(COOKIE))

    async def may_act(self, request: Any) -> bool:
        """A POST: the bearer token, or the session cookie with its CSRF token (header or form)."""
        if self.bearer_ok(request):
            return True
        cookie = request.cookies.get(COOKIE)
        if not self.session_ok(cookie):
            return False
        given = request.headers.get("x-csrf-token")
        if given is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            given = (await form(request)).get("csrf")
        return isinstance(given, str) and hmac.compare_digest(given, self.csrf(cookie))


async def form(request: Any) -> dict[str, str]:
    """A urlencoded form's fields (first value of each)."""
    from urllib.parse import parse_qs

    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    return {k: v[0] for k, v in fields.items()}


def _project_of(config: ServerConfig, request: Any, urls: list[str]) -> Project | None:
    name = request.query_params.get("project")
    if name:
        return config.project(name)
    wanted = {u.rstrip("/").removesuffix(".git") for u in urls if u}
    return next((p for p in config.projects if p.repo.rstrip("/").removesuffix(".git") in wanted), None)


class _Api:
    """The handlers of the webhooks and the JSON API."""

    def __init__(self, config: ServerConfig, store: Store, work: Work, triggers: Triggers) -> None:
        from pipekit import _server_pages as pages

        self.config, self.store, self.work, self.triggers = config, store, work, triggers
        self.auth = Auth(config.token)
        self.pages = pages

    def denied(self) -> Response:
        return JSONResponse({"error": "the server's token is needed (Authorization: Bearer TOKEN)"}, status_code=401)

    async def hook(self, request: Request, kind: str) -> Response:
        body = await request.body()
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        repo = payload.get("repository") or payload.get("project") or {}
        urls = [repo.get(k, "") for k in ("clone_url", "ssh_url", "html_url", "git_http_url", "git_ssh_url", "url")]
        project = _project_of(self.config, request, urls)
        secret = project.secret(project.webhook_secret_env) if project else None
        if project is None or not secret:
            return JSONResponse({"error": "no project with a webhook secret matches this hook"}, status_code=401)
        if kind == "github":
            mac = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(request.headers.get("x-hub-signature-256", ""), mac)
            event = request.headers.get("x-github-event", "")
        else:
            ok = hmac.compare_digest(request.headers.get("x-gitlab-token", ""), secret)
            event = "push" if request.headers.get("x-gitlab-event", "") == "Push Hook" else ""
        if not ok:
            self.work.log(f"{kind} webhook for {project.name} refused: bad signature")
            return JSONResponse({"error": "bad signature"}, status_code=401)
        ref, sha = str(payload.get("ref", "")), str(payload.get("after") or payload.get("checkout_sha") or "")
        if event != "push" or not ref.startswith("refs/heads/") or not sha.strip("0"):
            return JSONResponse({"ignored": f"not a push to a branch ({event or 'no event'})"})
        run, why = await asyncio.to_thread(self.triggers.push, project, ref.removeprefix("refs/heads/"), sha)
        return JSONResponse({"run": run} if run else {"ignored": why}, status_code=202 if run else 200)

    async def github(self, request: Request) -> Response:
        return await self.hook(request, "github")

    async def gitlab(self, request: Request) -> Response:
        return await self.hook(request, "gitlab")

    async def list_runs(self, request: Request) -> Response:
        if not self.auth.may_read(request, self.config.public_read):
            return self.denied()
        q = request.query_params
        limit = int(q.get("limit", "100")) if q.get("limit", "100").isdigit() else 100
        rows = self.store.runs(q.get("project"), q.get("branch"), q.get("status"), limit)
        return JSONResponse([r.to_json() for r in rows])

    def _found(self, request: Request) -> Any:
        return self.store.get(int(request.path_params["id"]))

    async def one_run(self, request: Request) -> Response:
        if not self.auth.may_read(request, self.config.public_read):
            return self.denied()
        run = self._found(request)
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse({**run.to_json(), **self.pages.stages_json(run)})

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
        ok = self.work.cancel(int(request.path_params["id"]), why="cancelled by a user")
        return self.pages.after_action(request, {"cancelled": ok}, int(request.path_params["id"]))

    async def rerun(self, request: Request) -> Response:
        if not await self.auth.may_act(request):
            return self.denied()
        run = self._found(request)
        project = self.config.project(run.project) if run else None
        if run is None or project is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        new = self.work.submit(project, run.branch, run.commit, "rerun", dict(run.params))
        return self.pages.after_action(request, {"run": new}, new)

    async def trigger(self, request: Request) -> Response:
        if not await self.auth.may_act(request):
            return self.denied()
        project = self.config.project(request.path_params["name"])
        if project is None:
            return JSONResponse({"error": "no such project"}, status_code=404)
        body = await request.json() if request.headers.get("content-type", "").startswith("application/json") else {}
        branch = str(body.get("branch") or project.branches[0])
        params = {str(k): str(v) for k, v in (body.get("params") or {}).items()}
        try:
            sha = str(body.get("commit") or (await asyncio.to_thread(self.work.git.heads, project)).get(branch) or "")
        except Exception as e:
            return JSONResponse({"error": str(e)}, status_code=502)
        if not sha:
            return JSONResponse({"error": f"{project.name} has no branch {branch}"}, status_code=404)
        return JSONResponse({"run": self.work.submit(project, branch, sha, "manual", params)}, status_code=202)


def make_app(config: ServerConfig, store: Store, work: Work, triggers: Triggers, on_shutdown: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    api = _Api(config, store, work, triggers)
    routes = [
        Route("/hooks/github", api.github, methods=["POST"]),
        Route("/hooks/gitlab", api.gitlab, methods=["POST"]),
        Route("/api/runs", api.list_runs),
        Route("/api/runs/{id:int}", api.one_run),
        Route("/api/runs/{id:int}/log", api.log),
        Route("/api/runs/{id:int}/events", api.events),
        Route("/api/runs/{id:int}/cancel", api.cancel, methods=["POST"]),
        Route("/api/runs/{id:int}/rerun", api.rerun, methods=["POST"]),
        Route("/api/projects/{name}/runs", api.trigger, methods=["POST"]),
        *api.pages.routes(config, store, api.auth),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(on_shutdown)

    return Starlette(routes=routes, lifespan=lifespan)


def _read(path: Any) -> str:
    try:
        return str(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""
