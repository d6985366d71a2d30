"""Rate limits shared through a real Redis: one bucket for every app, the Lua bucket
against the in-process one, and an outage that neither fails requests nor lifts limits."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from digitrec.api import create_app
from digitrec.api.ratelimit import KEY_PREFIX, RedisBuckets
from digitrec.api.security import RateLimiter
from digitrec.config import Settings
from digitrec.errors import DependencyMissing, RateLimited
from digitrec.predict import Predictor
from tests.conftest import LiveServer, RedisServer, parse_metrics, value

MODEL = "/api/v1/model"  # a cheap route behind the API's rate limit
PER_MINUTE = 6  # a bucket of 5 (the smallest), one token back every 10 s
CAPACITY = 5


def fallbacks() -> float:
    return REGISTRY.get_sample_value("digitrec_rate_limit_fallbacks_total") or 0.0


@pytest.fixture
def apps(
    tmp_path: Path, predictor: Predictor, redis_server: RedisServer
) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps (two workers, or two replicas) on one Redis, told clients apart by
    X-Forwarded-For so each test step can be a client of its own."""
    settings = Settings(
        home=tmp_path,
        redis_url=redis_server.url,
        rate_limit_per_minute=PER_MINUTE,
        trust_proxy_headers=True,
    )
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(TestClient(create_app(settings, predictor), client=peer))
            for peer in (("127.0.0.1", 50001), ("127.0.0.1", 50002))
        )
        yield a, b


def alternate(apps: tuple[TestClient, TestClient], client: str, n: int) -> list[int]:
    return [
        apps[i % 2].get(MODEL, headers={"x-forwarded-for": client}).status_code for i in range(n)
    ]


def test_apps_share_one_bucket(apps: tuple[TestClient, TestClient]) -> None:
    """Requests alternated between two apps are allowed up to the one bucket's capacity,
    then both refuse with Retry-After (each app alone would allow five)."""
    assert alternate(apps, "10.0.0.1", CAPACITY) == [200] * CAPACITY
    for app in apps:
        refused = app.get(MODEL, headers={"x-forwarded-for": "10.0.0.1"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60 // PER_MINUTE
    assert apps[1].get(MODEL, headers={"x-forwarded-for": "10.0.0.2"}).status_code == 200


def test_lua_bucket_is_the_in_process_bucket(redis_server: RedisServer) -> None:
    """The same takes at the same times give the same answers and waits as RateLimiter's,
    refill included; the key expires once its bucket would be full again."""
    local = RateLimiter(per_minute=60)  # 1 token/s, capacity 10
    times = [0.0] * 11 + [0.4, 1.0, 1.0, 3.5, 3.5, 3.5, 3.6]

    async def run() -> tuple[list[float], int]:
        shared = RedisBuckets(redis_server.url)
        await shared.start()
        try:
            waits = []
            for now in times:
                wait = await shared.take("t", local.rate, local.capacity, now=1000 + now)
                assert wait is not None
                waits.append(wait)
            ttl = await shared.client.pttl(f"{KEY_PREFIX}t")
            return waits, int(ttl)
        finally:
            await shared.stop()

    waits, ttl = asyncio.run(run())
    expected = []
    for now in times:
        try:
            local.check("t", now=now)
            expected.append(0.0)
        except RateLimited as refused:
            expected.append(refused.retry_after)
    assert waits == pytest.approx(expected)
    assert waits[10] == pytest.approx(1.0) and waits[11] == pytest.approx(0.6)
    assert waits.count(0.0) == 10 + 1 + 2  # the bucket, then one token after 1 s, two after 3.5
    assert 1000 < ttl <= 11_000  # (capacity - tokens) / rate, plus a second


def test_outage_falls_back_to_this_process_then_shares_again(
    apps: tuple[TestClient, TestClient],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="digitrec.api.ratelimit")
    assert alternate(apps, "10.0.1.1", CAPACITY + 1) == [200] * CAPACITY + [429]
    redis_server.stop()
    before = fallbacks()
    # Each app counts on its own now: still bounded (five each), never a 500.
    for app in apps:
        codes = [
            app.get(MODEL, headers={"x-forwarded-for": "10.0.1.2"}).status_code
            for _ in range(CAPACITY + 1)
        ]
        assert codes == [200] * CAPACITY + [429], codes
    assert fallbacks() - before == 2 * (CAPACITY + 1)
    outage = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(outage) == 2, outage  # once per app (per worker), not once per request

    redis_server.start()
    for app in apps:  # each app asks Redis again after RETRY_S
        _wait_shared(app)
    back = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
    assert len(back) == 2, back
    assert alternate(apps, "10.0.1.3", CAPACITY + 2) == [200] * CAPACITY + [429, 429]


def _wait_shared(app: TestClient, timeout: float = 10) -> None:
    """Until a request is counted in Redis (each probe is a client of its own)."""
    deadline = time.monotonic() + timeout
    probe = 0
    while True:
        probe += 1
        before = fallbacks()
        response = app.get(MODEL, headers={"x-forwarded-for": f"10.0.2.{probe}"})
        assert response.status_code == 200, response.text
        if fallbacks() == before:
            return
        assert time.monotonic() < deadline, "the app did not use Redis again"
        time.sleep(0.1)


def test_redis_url_without_the_package_is_a_start_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(DependencyMissing, match=r"pip install 'digitrec\[redis\]'"):
        create_app(Settings(home=tmp_path, redis_url="redis://127.0.0.1:1/0"))


@pytest.mark.server
def test_two_workers_of_a_real_server_share_the_limit(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`digitrec serve --workers 2`: each worker has its own Redis client, one count;
    with Redis gone the workers count on their own, answer, and say so in /metrics."""
    server = LiveServer(
        tmp_path,
        env={
            "DIGITREC_REDIS_URL": redis_server.url,
            "DIGITREC_RATE_LIMIT_PER_MINUTE": str(PER_MINUTE),
            "DIGITREC_TRUST_PROXY_HEADERS": "true",
        },
        args=("--workers", "2"),
    )
    try:
        server.wait_ready()

        def get(client: str, path: str = MODEL) -> httpx.Response:
            # A new connection each: the kernel spreads them over both workers.
            return httpx.get(server.url + path, headers={"x-forwarded-for": client}, timeout=10)

        codes = [get("10.0.3.1").status_code for _ in range(3 * CAPACITY)]
        assert codes == [200] * CAPACITY + [429] * (2 * CAPACITY), codes
        redis_server.stop()
        codes = [get("10.0.3.2").status_code for _ in range(3 * CAPACITY)]
        assert set(codes) == {200, 429} and codes[:CAPACITY] == [200] * CAPACITY, codes
        scrape = parse_metrics(get("10.0.3.3", "/metrics").text)
        assert value(scrape, "digitrec_rate_limit_fallbacks_total") >= 3 * CAPACITY
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log.read_text()
