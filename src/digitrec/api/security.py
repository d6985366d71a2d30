"""What keeps the service safe: body limits, security headers, rate limits, web tokens.

The two middlewares are plain ASGI so they see every response, errors included, and
can refuse an oversized body while it streams in rather than after it was read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitrec.errors import PayloadTooLarge, RateLimited

log = logging.getLogger(__name__)
INTERNAL_ERROR_MESSAGE = "the server failed to answer; it was logged"
INTERNAL_ERROR = {"error": {"code": "internal_error", "message": INTERNAL_ERROR_MESSAGE}}

# 'wasm-unsafe-eval': the offline mode compiles ONNX Runtime's WebAssembly (our own file,
# from 'self'); it allows no eval() of JavaScript.
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


async def send_json_error(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class _BodyTooLarge(Exception):
    pass


class _TrackedSend:
    """``send``, remembering whether the response has started (then no error can be sent)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class UnexpectedErrorMiddleware:
    """Answer an unexpected exception with a JSON 500 (logged with its traceback) from
    inside the middleware stack, so the answer still passes the security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = _TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except _BodyTooLarge:
            raise  # BodyLimitMiddleware's own signal, answered 413 there
        except ClientDisconnect:
            log.info("client left before sending its whole request: %s", scope.get("path"))
            return  # nobody to answer (e.g. cut off by the body timeout with a 408)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if tracked.started:
                raise  # the answer is under way: the server closes the connection
            await send_json_error(send, 500, INTERNAL_ERROR)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, without reading them whole
    (``paths``: smaller limits for routes whose bodies are small JSON, e.g. corrections).

    A declared Content-Length over the limit is refused before any byte is read; a
    chunked body is counted as it arrives and cut off as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, limit: int, paths: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = limit
        self.paths = paths or {}

    def _error(self, limit: int) -> dict[str, Any]:
        return PayloadTooLarge(f"the request body is over the {limit}-byte limit").to_dict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope.get("path", ""), self.default)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = False
            if too_big:
                await send_json_error(send, 413, self._error(limit))
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        tracked = _TrackedSend(send)
        try:
            await self.app(scope, counting_receive, tracked)
        except _BodyTooLarge:
            if not tracked.started:
                await send_json_error(send, 413, self._error(limit))


class RateLimiter:
    """Token buckets per caller: ``per_minute`` requests, bursts of up to a sixth of that.

    Buckets live in a bounded LRU, so a flood of distinct clients cannot grow memory.
    ``per_minute = 0`` turns limiting off. This is the count of one process; the same
    bucket counted in Redis, shared by every worker and replica, is ``api.ratelimit``.
    """

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(5.0, per_minute / 6.0)
        self.max_clients = max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, key: str, now: float | None = None) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            raise rate_limited((1 - tokens) / self.rate)
        self.buckets[key] = (tokens - 1, now)
        while len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)


def rate_limited(wait: float) -> RateLimited:
    """The 429 for a caller whose bucket fills up again in ``wait`` seconds."""
    return RateLimited(f"too many requests: try again in {math.ceil(wait)} s", retry_after=wait)


class WebTokens:
    """Short-lived signed tokens that let the web page predict without an API key.

    A token carries its expiry and is signed together with the client it was issued to,
    so it only works from there. Where it is accepted is decided in ``access.guard``.
    """

    def __init__(self, secret: bytes | None = None, ttl: int = 600) -> None:
        self.secret = secret or secrets.token_bytes(32)
        self.ttl = ttl

    def _sign(self, payload: str, client: str) -> str:
        message = f"{payload}|{client}".encode()
        mac = hmac.new(self.secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def issue(self, client: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl)
        payload = f"{expires}.{secrets.token_hex(8)}"
        return f"{payload}.{self._sign(payload, client)}"

    def verify(self, token: str, client: str, now: float | None = None) -> bool:
        """Valid, unexpired and issued to ``client``; any malformed token is just invalid."""
        if len(token) > 128 or not token.isascii():
            return False
        try:
            expires, nonce, signature = token.split(".")
            expiry = int(expires)
        except ValueError:
            return False
        expected = self._sign(f"{expires}.{nonce}", client)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return False
        return expiry > (time.time() if now is None else now)
