"""What every request to the server goes through before a handler sees it, and the checks the
handlers share: request bodies capped per route before anything reads them (413), secrets compared
in constant time as bytes (any header or cookie, ASCII or not), numbers from a URL bounded.

Caps: webhooks (``/hooks/``) ``max_webhook_body`` (25 MB by default), every other body 64 KiB (the
login form, the actions' forms, the API's JSON). A body over its cap is refused when its
``Content-Length`` says so, or as soon as the bytes read pass it, and the handler never runs.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["FORM_LIMIT", "MAX_ID", "BodyLimit", "bounded", "same"]

FORM_LIMIT = 64 * 1024
MAX_ID = 2**63 - 1  # SQLite's largest integer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def same(given: str | None, expected: str) -> bool:
    """``given == expected`` in constant time, whatever characters ``given`` holds."""
    return hmac.compare_digest((given or "").encode("utf-8", "surrogateescape"), expected.encode())


def bounded(text: str | None, default: int, low: int, high: int) -> int | None:
    """A whole number from a query or a path between ``low`` and ``high`` (None: not one)."""
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if low <= value <= high else None


class BodyLimit:
    """ASGI middleware: the request body, read up to its route's cap, then given to the app; a
    longer one is answered 413 without the app."""

    def __init__(self, app: Any, webhook_limit: int) -> None:
        self.app, self.webhook_limit = app, webhook_limit

    def limit(self, path: str) -> int:
        return self.webhook_limit if path.startswith("/hooks/") else FORM_LIMIT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope.get("path", ""))
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length and (not length.isdigit() or int(length) > limit):
            await _too_large(send, limit)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, given = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal given
            if given:
                return await receive()
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _too_large(send: Send, limit: int) -> None:
    text = json.dumps({"error": f"the request body is larger than this route takes ({limit} bytes)"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(text)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": text})
