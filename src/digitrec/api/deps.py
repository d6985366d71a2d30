"""Dependencies shared by the routes: the service, and who the caller is (keys, limits).

Access control lives here, in ``guard``: an API key gets the API rate limit per key; the
web page (a valid X-Web-Token, on the routes the page calls, from the client it was
issued to, in a same-origin browser request) gets the web limit per client; anyone else is
refused when keys are required, and otherwise gets the API limit per client (off unless
configured: local use is never throttled). Clients are told apart by address, per /64
for IPv6 (one host holds a whole /64), and behind a proxy by the X-Forwarded-For entry
that the nearest untrusted hop was seen from.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from digitrec.api.service import Service
from digitrec.config import Settings
from digitrec.errors import Forbidden, Unauthorized

WEB_TOKEN_HEADER = "x-web-token"  # noqa: S105 - a header name, not a secret
# What a web-page token may call: what the page itself calls (reading a digit, and the
# model card it shows); nothing else of the API.
WEB_TOKEN_PATHS = frozenset({"/api/v1/predict", "/api/v1/model"})
IPV6_CLIENT_PREFIX = 64  # an IPv6 client is its /64: hosts get whole /64s


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


@functools.lru_cache(maxsize=8)
def _networks(
    proxies: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The trusted proxies, parsed once (Settings validated them)."""
    return tuple(ipaddress.ip_network(net, strict=False) for net in proxies)


def _trusted(address: str, settings: Settings) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip in net for net in _networks(tuple(settings.trusted_proxies)))


def client_address(request: Request) -> str:
    """The client's address. Behind trusted proxies (``trust_proxy_headers``), the
    rightmost X-Forwarded-For entry that is not itself a trusted proxy: entries to its
    left were written by the client and prove nothing."""
    settings: Settings = request.app.state.service.settings
    peer = request.client.host if request.client else "unknown"
    if not settings.trust_proxy_headers or not _trusted(peer, settings):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",")]
    for hop in reversed([h for h in hops if h]):
        if _ip(hop) is None:
            return peer  # a proxy never writes this: do not believe the header
        if not _trusted(hop, settings):
            return hop
    return peer


def client_key(address: str) -> str:
    """What rate limits and web tokens count by: the address, or its /64 for IPv6."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip or address)


def from_own_page(request: Request) -> bool:
    """Is this a browser request from our own page (or an origin allowed by CORS)?

    Browsers send Sec-Fetch-Site and Origin and scripts on other sites cannot forge them;
    a program can, so this keeps other sites' pages out, not determined programs (that
    is what API keys are for). With keys required, a request with neither header is not
    from a browser and is refused.
    """
    settings: Settings = request.app.state.service.settings
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    own = origin is None or origin in settings.cors_origins
    if not own and urlsplit(origin or "").netloc != request.headers.get("host", ""):
        return False
    return not (settings.require_api_key and site is None and origin is None)


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


def _web_caller(request: Request, service: Service, client: str) -> bool:
    token = request.headers.get(WEB_TOKEN_HEADER)
    return (
        token is not None
        and service.settings.web_tokens
        and request.url.path in WEB_TOKEN_PATHS
        and from_own_page(request)
        and service.web_tokens.verify(token, client)
    )


async def guard(request: Request) -> Caller:
    """Authenticate and apply the caller's rate limit (see the module docstring)."""
    service: Service = request.app.state.service
    client = client_key(client_address(request))
    secret = presented_key(request)
    if secret is not None:
        key = service.keys.authenticate(secret)
        service.api_limiter.check(f"key:{key.id}")
        return Caller("key", key.id)
    if _web_caller(request, service, client):
        service.web_limiter.check(f"web:{client}")
        return Caller("web", client)
    if service.settings.require_api_key:
        raise Unauthorized(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            code="api_key_required",
        )
    service.api_limiter.check(f"ip:{client}")
    return Caller("anonymous", client)


def web_token_for(request: Request) -> str:
    """Issue a web-page token to this client, if it is our page asking."""
    service: Service = request.app.state.service
    if not service.settings.web_tokens:
        raise Forbidden(
            "web-page tokens are turned off on this server: use an API key",
            code="web_tokens_off",
        )
    client = client_key(client_address(request))
    service.web_limiter.check(f"web-token:{client}")
    if not from_own_page(request):
        raise Forbidden("web-page tokens are only for this server's own page", code="cross_origin")
    return service.web_tokens.issue(client)
