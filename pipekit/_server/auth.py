"""Who a request is: a user's token, the session cookie of a login, and its CSRF token.

Every user has a token of their own (``[users.NAME]`` in the configuration); the shared token
(``token_env``) is the user ``admin``. A request is a user's when it has ``Authorization: Bearer
TOKEN``, or the session cookie a ``POST /login`` with that token set (``HttpOnly``,
``SameSite=Strict``); a POST with the cookie also needs the CSRF token the pages send with each
form. Reads need a user too unless ``public_read = true``. Tokens are only compared as SHA-256
digests; no token is stored, logged or put in a record.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from pipekit._server.config import User
from pipekit._server.limits import same
from pipekit._server.store import Store

__all__ = ["COOKIE", "Auth", "form"]

COOKIE = "pipekit_session"


class Auth:
    """The users (by the digest of their token), and logins: a session cookie is ``NONCE.MAC``,
    valid while the server's store has it for that user with the token it logged in with (a logout,
    its expiry, or a new token for the user ends it)."""

    def __init__(self, logins: dict[str, User], store: Store, lifetime: float) -> None:
        self._logins = logins
        self._key = store.key("sessions")
        self.store, self.lifetime = store, lifetime

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def user_of_token(self, given: str) -> User | None:
        """The user whose token ``given`` is (compared as digests, in constant time each)."""
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for known, user in self._logins.items():
            if hmac.compare_digest(known, digest):
                found = user
        return found

    def new_session(self, user: User) -> str:
        nonce = secrets.token_hex(16)
        digest = next(d for d, u in self._logins.items() if u == user)
        self.store.add_session(self._mac("alive:" + nonce), time.time() + self.lifetime, user.name, self._mac(digest))
        return f"{nonce}.{self._mac('session:' + nonce)}"

    def session_user(self, cookie: str | None) -> User | None:
        nonce, _, mac = (cookie or "").partition(".")
        if not nonce or not nonce.isascii() or not same(mac, self._mac("session:" + nonce)):
            return None
        found = self.store.session(self._mac("alive:" + nonce))
        if found is None:
            return None
        name, credential = found
        user = next((u for d, u in self._logins.items() if u.name == name and same(credential, self._mac(d))), None)
        return user

    def session_ok(self, cookie: str | None) -> bool:
        return self.session_user(cookie) is not None

    def end_session(self, cookie: str | None) -> None:
        if self.session_ok(cookie):
            self.store.drop_session(self._mac("alive:" + (cookie or "").partition(".")[0]))

    def csrf(self, cookie: str) -> str:
        return self._mac("csrf:" + cookie)

    def bearer(self, request: Any) -> User | None:
        header = request.headers.get("authorization", "")
        return self.user_of_token(header[7:]) if header.startswith("Bearer ") else None

    def reader(self, request: Any) -> User | None:
        """The user a read comes from (bearer token or session cookie), or None."""
        return self.bearer(request) or self.session_user(request.cookies.get(COOKIE))

    def may_read(self, request: Any, public: bool) -> bool:
        return public or self.reader(request) is not None

    async def may_act(self, request: Any) -> User | None:
        """A POST's user: the bearer token's, or the session cookie's with its CSRF token (header or
        form); None when it has neither."""
        user = self.bearer(request)
        if user is not None:
            return user
        cookie = request.cookies.get(COOKIE)
        user = self.session_user(cookie)
        if user is None or cookie is None:
            return None
        given = request.headers.get("x-csrf-token")
        if given is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            given = (await form(request)).get("csrf")
        return user if isinstance(given, str) and same(given, self.csrf(cookie)) else None


async def form(request: Any) -> dict[str, str]:
    """A urlencoded form's fields (first value of each)."""
    from urllib.parse import parse_qs

    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    return {k: v[0] for k, v in fields.items()}
