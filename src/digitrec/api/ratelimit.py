"""Rate limits as ``guard`` applies them: counted in this process, or in Redis for all.

Without ``redis_url`` each worker counts its own requests (``security.RateLimiter``), so
with N workers or N replicas a client gets N times its limit. With it, every limit is one
token bucket in Redis, the same bucket as ``RateLimiter`` (the same rate, capacity and
Retry-After) taken by one atomic Lua script, so every worker of every replica draws on
the same tokens. Keys are ``digitrec:rl:<who>`` and expire once the bucket would be full
again, so idle clients vanish.

Redis is asked through ``redis.asyncio`` with short timeouts, never blocking the event
loop. When it cannot answer, a request is neither refused with a 500 nor let through
unbounded: it is counted in this process's own bucket instead (``metrics``' fallback
counter), Redis is left alone for ``RETRY_S``, and the outage is logged once when it
starts and once when it ends.
"""

from __future__ import annotations

import logging
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from digitrec.api import metrics
from digitrec.api.security import RateLimiter, rate_limited
from digitrec.errors import DependencyMissing

if TYPE_CHECKING:
    from digitrec.config import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "digitrec:rl:"
TIMEOUT_S = 0.25  # connect and per-command timeout: a slow Redis costs a request this much
RETRY_S = 1.0  # after a failure, requests skip Redis this long (counted in-process)

# KEYS[1]: the bucket; ARGV: rate (tokens/s), capacity, and the time in seconds, or ""
# for Redis's own clock (one clock for every replica). Returns {allowed, wait}: wait is
# a string, as Redis truncates Lua numbers to integers.
BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
else
    wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


class Limiter(Protocol):
    async def check(self, key: str) -> None:
        """Take one request from ``key``'s bucket; ``RateLimited`` (429) when it is empty."""


def redis_module() -> ModuleType:
    """``redis.asyncio``, or a clear error when ``redis_url`` is set without it."""
    try:
        import redis.asyncio
    except ImportError as exc:
        raise DependencyMissing(
            "DIGITREC_REDIS_URL is set but the redis package is not installed: "
            "pip install 'digitrec[redis]'"
        ) from exc
    return redis.asyncio


class LocalLimiter:
    """The limit counted in this process alone."""

    def __init__(self, per_minute: int) -> None:
        self.buckets = RateLimiter(per_minute)

    async def check(self, key: str) -> None:
        self.buckets.check(key)


class RedisBuckets:
    """This worker's Redis client (made in ``start``, closed in ``stop``: an app may be
    started again) and whether Redis is answering."""

    def __init__(self, url: str) -> None:
        self.module = redis_module()
        self.url = url
        self.client: Any = None
        self.script: Any = None
        self.down = False  # an outage is under way (logged when it starts and ends)
        self.skip_until = 0.0  # time.monotonic() before which Redis is not asked

    async def start(self) -> None:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.client = self.module.Redis.from_url(
            self.url,
            socket_connect_timeout=TIMEOUT_S,
            socket_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # a failure falls back at once; RETRY_S paces retries
        )
        self.script = self.client.register_script(BUCKET_SCRIPT)
        self.down, self.skip_until = False, 0.0

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = self.script = None

    async def take(
        self, key: str, rate: float, capacity: float, now: float | None = None
    ) -> float | None:
        """Take a token from ``key``'s bucket: 0 when one was there, else the seconds
        until one is; None when Redis did not answer (the caller counts it itself).
        ``now``: seconds on the caller's clock (tests); default Redis's own."""
        if self.script is None or time.monotonic() < self.skip_until:
            return None
        args = [repr(rate), repr(capacity), "" if now is None else repr(now)]
        try:
            allowed, wait = await self.script(keys=[KEY_PREFIX + key], args=args)
        except (self.module.RedisError, OSError) as exc:
            self.skip_until = time.monotonic() + RETRY_S
            if not self.down:
                self.down = True
                log.warning(
                    "rate limits: Redis did not answer (%s): counting per worker until it is back",
                    " ".join(str(exc).split()) or type(exc).__name__,
                )
            return None
        if self.down:
            self.down = False
            log.warning("rate limits: Redis answers again; limits are shared again")
        return 0.0 if int(allowed) else float(wait)


class SharedLimiter:
    """The limit counted in Redis for every worker and replica; in this process for the
    requests that come while Redis does not answer."""

    def __init__(self, redis: RedisBuckets, per_minute: int) -> None:
        self.redis = redis
        self.fallback = RateLimiter(per_minute)  # rate and capacity: one definition

    async def check(self, key: str) -> None:
        if self.fallback.rate <= 0:
            return
        wait = await self.redis.take(key, self.fallback.rate, self.fallback.capacity)
        if wait is None:
            metrics.record_rate_limit_fallback()
            self.fallback.check(key)
        elif wait > 0:
            raise rate_limited(wait)


class RateLimits:
    """The limits of one server process: the API's (per key or client) and the web
    page's (per visitor, and for issuing its tokens), shared through Redis when set."""

    def __init__(self, settings: Settings) -> None:
        self.redis = RedisBuckets(settings.redis_url) if settings.redis_url else None
        self.api = self._limiter(settings.api_rate_limit)
        self.web = self._limiter(settings.web_rate_limit)

    def _limiter(self, per_minute: int) -> Limiter:
        if self.redis is None:
            return LocalLimiter(per_minute)
        return SharedLimiter(self.redis, per_minute)

    async def start(self) -> None:
        if self.redis is not None:
            await self.redis.start()

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.stop()
