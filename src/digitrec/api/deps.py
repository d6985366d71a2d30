"""Dependencies shared by the routes: the service, and who the caller is (keys, limits)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from digitrec.api.service import Service
from digitrec.errors import Unauthorized

WEB_TOKEN_HEADER = "x-web-token"  # noqa: S105 - a header name, not a secret


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def client_address(request: Request, trust_proxy: bool) -> str:
    if trust_proxy:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.client.host if request.client else "unknown"


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key") or None


@dataclass(frozen=True)
class Caller:
    kind: str  # "key", "web" or "anonymous"
    id: str


async def guard(request: Request) -> Caller:
    """Authenticate (when keys are on, or a key is sent) and apply the caller's rate limit.

    API keys get the API limit per key; the web page (a valid X-Web-Token) gets the web
    limit per client address; without keys required, anyone else gets the API limit per
    client address.
    """
    service: Service = request.app.state.service
    settings = service.settings
    address = client_address(request, settings.trust_proxy_headers)
    secret = presented_key(request)
    web_token = request.headers.get(WEB_TOKEN_HEADER)
    if secret is not None:
        key = service.keys.authenticate(secret)
        caller = Caller("key", key.id)
        service.api_limiter.check(f"key:{key.id}")
    elif web_token and service.web_tokens.verify(web_token):
        caller = Caller("web", address)
        service.web_limiter.check(f"web:{address}")
    elif settings.require_api_key:
        raise Unauthorized(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            code="api_key_required",
        )
    else:
        caller = Caller("anonymous", address)
        service.api_limiter.check(f"ip:{address}")
    return caller
