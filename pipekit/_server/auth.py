"""The server's token and logins: the session cookie, its CSRF token, and reading a form.

Every POST needs the server's token: ``Authorization: Bearer TOKEN``, or the session cookie a
``POST /login`` sets (``HttpOnly``, ``SameSite=Strict``) together with the CSRF token the pages
send with each form. Reads need it too unless ``public_read = true``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from pipekit._server.limits import same
from pipekit._server.store import Store

__all__ = ["COOKIE", "Auth", "form"]

COOKIE = "pipekit_session"


class Auth:
    """The token, and logins: a session cookie is ``NONCE.MAC``, valid while the server's store has
    it (a logout or its expiry removes it)."""

    def __init__(self, token: str, store: Store, lifetime: float) -> None:
        self._token = token.encode()
        self.store, self.lifetime = store, lifetime

    def _mac(self, text: str) -> str:
        return hmac.new(self._token, text.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        nonce = secrets.token_hex(16)
        self.store.add_session(self._mac("alive:" + nonce), time.time() + self.lifetime)
        return f"{nonce}.{self._mac('session:' + nonce)}"

    def session_ok(self, cookie: str | None) -> bool:
        nonce, _, mac = (cookie or "").partition(".")
        if not nonce or not nonce.isascii() or not same(mac, self._mac("session:" + nonce)):
            return False
        return self.store.session_alive(self._mac("alive:" + nonce))

    def end_session(self, cookie: str | None) -> None:
        if self.session_ok(cookie):
            self.store.drop_session(self._mac("alive:" + (cookie or "").partition(".")[0]))

    def csrf(self, cookie: str) -> str:
        return self._mac("csrf:" + cookie)

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._token)

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
        return isinstance(given, str) and same(given, self.csrf(cookie))


async def form(request: Any) -> dict[str, str]:
    """A urlencoded form's fields (first value of each)."""
    from urllib.parse import parse_qs

    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    return {k: v[0] for k, v in fields.items()}
