"""The server's web view: the runs list, a run's page (with the report of the run, its live log,
its approval gates with Approve and Reject forms), the deployments, logging in and out. The pages
are thin: ``server.js`` builds them from the JSON API, every
element with ``textContent``; a Content-Security-Policy allows nothing but this server.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from pipekit._history.fs import DIRNAME
from pipekit._server.auth import COOKIE, Auth
from pipekit._server.auth import form as read_form
from pipekit._server.config import ServerConfig
from pipekit._server.store import AWAITING, ENDED, ServerRun, Store
from pipekit._server.work import history_of

__all__ = ["after_action", "follow", "routes", "stages_json"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-src 'self';"
    " img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)

REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE% · pipekit</title>
<link rel="stylesheet" href="/static/server.css"></head>
<body data-page="%PAGE%" data-run="%RUN%" data-csrf="%CSRF%">
<header><a href="/">pipekit</a> <a href="/deployments" id="nav-deployments">Deployments</a>
<span class="who">%WHO%</span></header>
<main>%MAIN%</main>
<script src="/static/server.js"></script>
</body></html>
"""

LOGIN = """<form method="post" action="/login" class="login"><input type="hidden" name="next" value="%NEXT%">
<input type="password" name="token" placeholder="your token" autocomplete="current-password" required>
<button>Log in</button></form>"""

TRIGGER = """<form method="post" action="/api/projects/%NAME%/runs" class="trigger">
<input type="hidden" name="csrf" value="%CSRF%"><input name="branch" value="%BRANCH%" aria-label="branch">
<button id="trigger-%NAME%">Run %NAME%</button></form>"""

LIST = """<h1>Runs</h1><div class="triggers">%TRIGGERS%</div>
<div class="filters"><select id="f-project"><option value="">every project</option></select>
<select id="f-branch"><option value="">every branch</option></select>
<select id="f-status"><option value="">every status</option></select></div>
<table id="runs"><thead><tr><th>#</th><th>project</th><th>branch</th><th>commit</th><th>trigger</th><th>status</th>
<th>started</th><th>duration</th></tr></thead><tbody></tbody></table>"""

LOGOUT = """<span id="user">%USER%</span>
<form method="post" action="/logout"><button>Log out</button></form>"""

RUN = """<h1 id="title">Run %RUN%</h1><p id="facts"></p><p id="notice" hidden></p>%ACTIONS%
<div id="gates"></div>
<table id="stages"><thead><tr><th>stage</th><th>status</th><th>duration</th><th>error</th></tr></thead>
<tbody></tbody></table>
<h2>Live log</h2><pre id="live"></pre>
<h2>Report</h2><iframe id="report" title="the run's report"></iframe>"""

DEPLOYMENTS = """<h1>Deployments</h1>
<div class="filters"><select id="f-environment"><option value="">every environment</option></select></div>
<table id="deployments"><thead><tr><th>environment</th><th>project</th><th>run</th><th>commit</th><th>stage</th>
<th>approved by</th><th>approved at</th><th>started</th><th>outcome</th></tr></thead><tbody></tbody></table>"""

ACTIONS = """<div class="actions">
<form method="post" action="/api/runs/%RUN%/cancel"><input type="hidden" name="csrf" value="%CSRF%">
<button id="cancel">Cancel</button></form>
<form method="post" action="/api/runs/%RUN%/rerun"><input type="hidden" name="csrf" value="%CSRF%">
<button id="rerun">Re-run</button></form>
</div>"""


def stages_json(run: ServerRun) -> dict[str, Any]:
    """The stages of a run as its history has them (statuses, durations, errors, tests, artifacts)."""
    history = history_of(run.workspace) if run.run_id else None
    if history is None:
        return {"stages": []}
    try:
        tests: dict[str, dict[str, int]] = {}
        for t in history.tests(run.run_id):
            total = tests.setdefault(t.stage, {"tests": 0, "failures": 0, "errors": 0, "skipped": 0})
            for k in total:
                total[k] += getattr(t, k)
        artifacts: dict[str, list[str]] = {}
        for a in history.artifacts(run.run_id):
            artifacts.setdefault(a.stage, []).append(a.path)
        stages = [
            {
                "name": s.name,
                "status": str(s.status),
                "duration": s.duration_s,
                "error": s.error,
                "tests": tests.get(s.name),
                "artifacts": artifacts.get(s.name, []),
            }
            for s in history.stages(run.run_id)
        ]
    finally:
        history.close()
    return {"stages": stages}


async def follow(store: Store, run_id: int) -> AsyncIterator[str]:
    """Server-sent events: each line the run's stages print (as their history logs have it), until
    the run ends."""
    offsets: dict[Path, int] = {}
    while True:
        run = store.get(run_id)
        if run is None:
            return
        sent = False
        if run.run_id and run.workspace:
            folder = Path(run.workspace) / DIRNAME / "logs" / run.run_id  # History.log_path's folder
            for path in sorted(folder.glob("*.log")) if folder.is_dir() else []:
                with open(path, "rb") as f:
                    f.seek(offsets.get(path, 0))
                    data = f.read()
                complete = data[: data.rfind(b"\n") + 1]
                offsets[path] = offsets.get(path, 0) + len(complete)
                for line in complete.decode("utf-8", "replace").splitlines():
                    sent = True
                    yield f"data: {json.dumps({'stage': path.stem, 'line': line})}\n\n"
        if (run.status in ENDED or run.status == AWAITING) and not sent:
            yield f"event: end\ndata: {json.dumps({'status': run.status})}\n\n"
            return
        if not sent:
            yield ": waiting\n\n"
        await asyncio.sleep(0.25)


def after_action(request: Any, data: dict[str, Any], run: int, status: int = 200) -> Response:
    """A form post goes back to the run's page (a refusal shown there); an API call gets JSON."""
    from urllib.parse import quote

    from starlette.responses import JSONResponse, RedirectResponse

    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        refused = f"?refused={quote(str(data.get('error', '')))}" if status >= 400 else ""
        return RedirectResponse(f"/runs/{run}{refused}", status_code=303)
    return JSONResponse(data, status_code=status)


class _Pages:
    def __init__(self, config: ServerConfig, store: Store, auth: Auth) -> None:
        self.config, self.store, self.auth = config, store, auth

    def page(self, request: Request, title: str, kind: str, body: str, run: str = "") -> Response:
        cookie = request.cookies.get(COOKIE)
        user = self.auth.session_user(cookie)
        logged_in = user is not None
        csrf = self.auth.csrf(cookie) if logged_in and cookie else ""
        if not logged_in and not self.config.public_read:
            body, kind = "<h1>Log in</h1>", "login"
        who = LOGOUT.replace("%USER%", html.escape(user.name)) if user is not None else LOGIN
        actions = ACTIONS.replace("%RUN%", run).replace("%CSRF%", csrf) if logged_in else ""
        triggers = "".join(
            TRIGGER.replace("%NAME%", html.escape(p.name)).replace("%BRANCH%", html.escape(p.branches[0]))
            for p in self.config.projects
        )
        body = body.replace("%TRIGGERS%", triggers if logged_in else "")
        text = PAGE.replace("%MAIN%", body.replace("%ACTIONS%", actions)).replace("%WHO%", who)
        text = text.replace("%NEXT%", html.escape(request.url.path)).replace("%TITLE%", html.escape(title))
        text = text.replace("%PAGE%", kind).replace("%RUN%", run).replace("%CSRF%", csrf)
        return HTMLResponse(text, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    async def runs_page(self, request: Request) -> Response:
        return self.page(request, "Runs", "runs", LIST)

    async def deployments_page(self, request: Request) -> Response:
        return self.page(request, "Deployments", "deployments", DEPLOYMENTS)

    async def run_page(self, request: Request) -> Response:
        run = str(request.path_params["id"])
        return self.page(request, f"Run {run}", "run", RUN.replace("%RUN%", run), run)

    async def report(self, request: Request) -> Response:
        from pipekit._report.data import report_data
        from pipekit._report.page import render_report

        if not self.auth.may_read(request, self.config.public_read):
            return PlainTextResponse("log in first", status_code=401)
        number = int(request.path_params["id"])
        run = self.store.get(number) if 0 < number <= 2**63 - 1 else None
        history = history_of(run.workspace) if run and run.run_id else None
        if history is None or run is None or run.run_id is None:
            return PlainTextResponse("this run has no report yet", status_code=404)
        try:
            text = render_report(report_data(history, run.run_id))
        finally:
            history.close()
        # its texts are the run's (stage output, test names): in an origin of its own (sandbox), so that
        # nothing in it could ever reach the page that frames it, its CSRF token or the API as the user
        return HTMLResponse(text, headers={"Cache-Control": "no-store", "Content-Security-Policy": REPORT_CSP})

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        target = str(form.get("next") or "/")
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        user = self.auth.user_of_token(str(form.get("token", "")))
        if user is None:
            await asyncio.sleep(0.5)  # a guess costs time
            return RedirectResponse(f"{target}?login=failed", status_code=303)
        response = RedirectResponse(target, status_code=303)
        lifetime = int(self.auth.lifetime)
        response.set_cookie(
            COOKIE, self.auth.new_session(user), max_age=lifetime, httponly=True, samesite="strict", path="/",
            secure=_https(request),
        )  # fmt: skip
        return response

    async def logout(self, request: Request) -> Response:
        self.auth.end_session(request.cookies.get(COOKIE))  # the cookie is dead on the server too
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_https(request))
        return response

    async def asset(self, request: Request) -> Response:
        from importlib.resources import files

        name = request.path_params["name"]
        if name not in ("server.js", "server.css"):
            return PlainTextResponse("", status_code=404)
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(files("pipekit._server").joinpath(name).read_text(encoding="utf-8"), media_type=kind)


def _https(request: Request) -> bool:
    """Served over HTTPS, or behind a proxy that says the browser's request was (``X-Forwarded-Proto``,
    ``Forwarded: proto=https``): the session cookie is then ``Secure``."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    proto = "proto=https" in request.headers.get("forwarded", "").lower()
    return request.url.scheme == "https" or forwarded == "https" or proto


def routes(config: ServerConfig, store: Store, auth: Auth) -> list[Any]:
    from starlette.routing import Route

    pages = _Pages(config, store, auth)
    return [
        Route("/", pages.runs_page),
        Route("/runs/{id:int}", pages.run_page),
        Route("/deployments", pages.deployments_page),
        Route("/runs/{id:int}/report", pages.report),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/static/{name}", pages.asset),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
    ]
