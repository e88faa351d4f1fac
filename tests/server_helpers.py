"""A git remote on disk and a `pipekit serve` process, for tests/test_server.py."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOKEN = "test-server-token-0123456789"
HOOK_SECRET = "hook-secret-for-tests"
STATUS_TOKEN = "status-token-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=env).stdout.strip()


class Remote:
    """A bare repository (the remote the server watches) and a clone that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        root.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        git("clone", "-q", str(self.bare), str(self.work), cwd=root)

    def push(self, files: dict[str, str], branch: str = "main", message: str = "change") -> str:
        """Commit ``files`` on ``branch`` and push; the new commit."""
        current = git("branch", "--show-current", cwd=self.work)
        if current != branch:
            known = git("branch", "--list", branch, cwd=self.work)
            git("checkout", "-q", *([] if known else ["-b"]), branch, cwd=self.work)
        for name, text in files.items():
            (self.work / name).write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", branch, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


class StatusSink:
    """A local HTTP server that records the commit statuses it receives."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(201)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Server:
    """`pipekit serve` as a process on a free port."""

    def __init__(self, root: Path, project: str, server: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "pipekit-server.toml"
        self.config.write_text(
            f'[server]\nlisten = "127.0.0.1:{self.port}"\nstate_dir = "state"\n{server}\n\n[[project]]\n{project}\n'
        )
        self.proc: subprocess.Popen[str] | None = None
        self.log = root / "server.log"
        self.extra_env: dict[str, str] = {}

    def env(self, busybox: str) -> dict[str, str]:
        return {
            **os.environ,
            "PIPEKIT_SERVER_TOKEN": TOKEN,
            "APP_HOOK_SECRET": HOOK_SECRET,
            "APP_STATUS_TOKEN": STATUS_TOKEN,
            "PIPEKIT_IMAGE_MAP": f"busybox={busybox}",
            **self.extra_env,
        }

    def start(self, busybox: str) -> Server:
        log = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipekit", "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(busybox),
            cwd=self.root,
            text=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.request("GET", "/api/runs")  # any answer: it listens (with or without a shared token)
                return self
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{self.log.read_text()}") from None
                time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()

    def api(self, method: str, path: str, data: Any = None, token: str | None = TOKEN) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status, answer = self.request(method, path, json.dumps(data).encode() if data is not None else None, headers)
        if status >= 400:
            raise urllib.error.URLError(f"{status}: {answer}")
        return answer

    def github_hook(self, branch: str, sha: str, secret: str = HOOK_SECRET) -> tuple[int, Any]:
        body = json.dumps({"ref": f"refs/heads/{branch}", "after": sha, "repository": {"clone_url": "x"}}).encode()
        sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": sig, "Content-Type": "application/json"}
        return self.request("POST", "/hooks/github?project=app", body, headers)

    def raw(
        self, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes = b""
    ) -> tuple[int, Any, bytes]:
        """A request with headers as bytes (any characters) and no redirect followed: status, headers, body."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path)
            for name, value in headers:
                conn.putheader(name, value)
            if not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            if body:
                conn.send(body)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def gitlab_hook(self, branch: str, sha: str, secret: str = HOOK_SECRET) -> tuple[int, Any]:
        body = json.dumps({"ref": f"refs/heads/{branch}", "checkout_sha": sha, "after": sha}).encode()
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret, "Content-Type": "application/json"}
        return self.request("POST", "/hooks/gitlab?project=app", body, headers)

    def wait(self, run: int, *statuses: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found: dict[str, Any] = self.api("GET", f"/api/runs/{run}")
            if found["status"] in statuses:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run} is {found['status']}, not {statuses}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def runs(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        return list(self.api("GET", f"/api/runs?{query}"))
