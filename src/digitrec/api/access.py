"""Access control: who the caller is (API key, web page, anyone), its rate limit, and
its client id for A/B tests.

``Access`` holds the key store, the rate limiters and the web-page token signer; it
lives on ``app.state.access``. The dependency is ``guard``: an API key gets the API rate
limit per key; the web page (a valid X-Web-Token, on the routes the page calls, from the
client it was issued to, in a same-origin browser request) gets the web limit per
client; anyone else is refused when keys are required, and otherwise gets the API limit
per client (off unless configured: local use is never throttled). Clients are told
apart by address, per /64 for IPv6 (one host holds a whole /64), and behind a proxy by
the X-Forwarded-For entry that the nearest untrusted hop was seen from.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from digitrec.api.ratelimit import RateLimits
from digitrec.api.security import WebTokens
from digitrec.config import Settings
from digitrec.errors import Forbidden, Unauthorized, ValidationFailed
from digitrec.keys import LiveKeys

WEB_TOKEN_HEADER = "x-web-token"  # noqa: S105 - a header name, not a secret
# What a web-page token may call: what the pages themselves call (reading a digit, the
# model card, corrections, the dashboard's figures, the offline mode's downloads); nothing
# else of the API.
WEB_TOKEN_PATHS = frozenset(
    {
        "/api/v1/predict",
        "/api/v1/number",
        "/api/v1/model",
        "/api/v1/feedback",
        "/api/v1/feedback/offline",
        "/api/v1/stats",
        "/api/v1/model/offline",  # the offline mode: the model's metadata and ONNX file,
        "/api/v1/model/onnx",
        "/api/v1/model/scripts/onnx",  # and the script model's (digits of other scripts)
    }
)
IPV6_CLIENT_PREFIX = 64  # an IPv6 client is its /64: hosts get whole /64s
CLIENT_ID_HEADER = "x-client-id"
CLIENT_COOKIE = "digitrec_client"  # first-party, anonymous: a web visitor's A/B client id
CLIENT_ID_MAX = 128  # characters of an X-Client-Id


class Access:
    """The key store, rate limiters and web-page token signer of one server process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = LiveKeys(settings)
        self.limits = RateLimits(settings)  # in this process, or in Redis (started with the app)
        secret = settings.secret_key.get_secret_value().encode() if settings.secret_key else None
        self.web_tokens = WebTokens(secret, ttl=settings.web_token_ttl_s)

    async def start(self) -> None:
        """In the app's lifespan: read the API keys, then keep them fresh in the background;
        connect the rate limits to Redis where they are shared."""
        await self.keys.start()
        await self.limits.start()

    async def stop(self) -> None:
        await self.limits.stop()
        await self.keys.stop()


def _access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


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
    settings: Settings = _access(request).settings
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
    settings: Settings = _access(request).settings
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


def _web_caller(request: Request, access: Access, client: str) -> bool:
    token = request.headers.get(WEB_TOKEN_HEADER)
    return (
        token is not None
        and access.settings.web_tokens
        and request.url.path in WEB_TOKEN_PATHS
        and from_own_page(request)
        and access.web_tokens.verify(token, client)
    )


async def guard(request: Request) -> Caller:
    """Authenticate and apply the caller's rate limit (see the module docstring)."""
    access = _access(request)
    client = client_key(client_address(request))
    secret = presented_key(request)
    if secret is not None:
        key = access.keys.authenticate(secret)
        await access.limits.api.check(f"key:{key.id}")
        return Caller("key", key.id)
    if _web_caller(request, access, client):
        await access.limits.web.check(f"web:{client}")
        return Caller("web", client)
    if access.settings.require_api_key:
        raise Unauthorized(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            code="api_key_required",
        )
    await access.limits.api.check(f"ip:{client}")
    return Caller("anonymous", client)


def client_id(request: Request, caller: Caller) -> str | None:
    """Who the caller is for A/B assignment: the API key's id, else the X-Client-Id
    header, else the page's anonymous cookie; None (production) without any."""
    if caller.kind == "key":
        return f"key:{caller.id}"
    header = request.headers.get(CLIENT_ID_HEADER)
    if header is not None:
        if not 0 < len(header) <= CLIENT_ID_MAX or not header.isprintable():
            raise ValidationFailed(
                f"X-Client-Id: 1 to {CLIENT_ID_MAX} printable characters", code="validation_error"
            )
        return f"client:{header}"
    cookie = request.cookies.get(CLIENT_COOKIE, "")
    return f"web:{cookie}" if is_cookie_id(cookie) else None


def is_cookie_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


async def web_token_for(request: Request) -> str:
    """Issue a web-page token to this client, if it is our page asking."""
    access = _access(request)
    if not access.settings.web_tokens:
        raise Forbidden(
            "web-page tokens are turned off on this server: use an API key",
            code="web_tokens_off",
        )
    client = client_key(client_address(request))
    await access.limits.web.check(f"web-token:{client}")
    if not from_own_page(request):
        raise Forbidden("web-page tokens are only for this server's own page", code="cross_origin")
    return access.web_tokens.issue(client)
