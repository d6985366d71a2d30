"""Several replicas behind a load balancer on shared state, all real and on loopback:
PostgreSQL, Redis, three `digitrec serve` replicas and HAProxy with deploy/haproxy.cfg
(tests/topology.py starts them).

What it shows, in order on one topology: a key created once works on every replica and
a revocation reaches all; a client's rate limit holds across replicas; an A/B client gets
the same arm whichever replica answers; corrections from every replica land in one
database; a replica restarted with SIGTERM under load behind the proxy loses no request;
a dead database gives clear 503s and the service comes back with it.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from digitrec.db import Database
from digitrec.db.tables import CorrectionRow
from tests.conftest import in_ci
from tests.topology import Topology, topology_missing

pytestmark = [pytest.mark.server, pytest.mark.topology]
GOLDEN = Path(__file__).parent / "golden"
PREDICT = "/api/v1/predict"
SEVEN = (GOLDEN / "canvas_transparent_7.png").read_bytes()
KEY_RATE = 60  # requests per minute per key: a burst of 10 (a sixth), then 1 a second
CANDIDATE = "digitnet:20261125-123134"  # the older shipped model, A/B-tested against production


def until(check: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"not within {timeout} s: {what}")


_addresses = itertools.count(1)


def somebody() -> dict[str, str]:
    """A client address of its own (X-Forwarded-For, which the replicas trust from
    loopback): the API limit is per client and shared by every replica, so anonymous
    requests of tests that are not about limits each come from another address."""
    n = next(_addresses)
    return {"x-forwarded-for": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}


def predict(url: str, **headers: str) -> httpx.Response:
    headers = {"content-type": "image/png", **somebody(), **headers}
    return httpx.post(url + PREDICT, content=SEVEN, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    reason = topology_missing()
    if reason:
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    env = {
        "DIGITREC_RATE_LIMIT_PER_MINUTE": str(KEY_RATE),
        "DIGITREC_WEB_RATE_LIMIT_PER_MINUTE": "0",
        "DIGITREC_MODEL_POLL_S": "0.5",  # aliases and A/B re-read this often
        "DIGITREC_KEYS_REFRESH_S": "0.5",
        "DIGITREC_DB_CHECK_S": "0.5",
        "DIGITREC_SHUTDOWN_DELAY_S": "3",  # HAProxy checks every second, down after 2 fails
    }
    topology = Topology(tmp_path_factory.mktemp("topology"), replicas=3, env=env).start()
    try:
        yield topology
    finally:
        topology.stop()


def replica_urls(topology: Topology) -> list[str]:
    return [r.url for r in topology.replicas]


def test_a_key_made_once_works_everywhere_and_a_revocation_reaches_all(
    topology: Topology,
) -> None:
    made = topology.cli("keys", "create", "--name", "everywhere")
    assert made.returncode == 0, made.stderr
    key_id, secret = made.stdout.split()[2], made.stdout.strip().splitlines()[-1]
    bearer = {"authorization": f"Bearer {secret}"}
    for url in [*replica_urls(topology), topology.proxy_url]:
        until(lambda url=url: predict(url, **bearer).status_code == 200, what=f"key on {url}")
    revoked = topology.cli("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    for url in replica_urls(topology):
        until(lambda url=url: predict(url, **bearer).status_code == 403, what=f"revoked on {url}")
        assert predict(url, **bearer).json()["error"]["code"] == "api_key_revoked"


def test_a_clients_rate_limit_holds_across_replicas(topology: Topology) -> None:
    made = topology.cli("keys", "create", "--name", "limited")
    secret = made.stdout.strip().splitlines()[-1]
    bearer = {"authorization": f"Bearer {secret}"}
    urls = replica_urls(topology)
    for url in urls:
        until(lambda url=url: predict(url, **bearer).status_code == 200, what="key known")
    # One bucket for the key, whichever replica (or the proxy) asks: a burst, then one a
    # second. A bucket per replica would let 30 through (3 bursts of 10). What may pass
    # is bounded by the time the requests took, never by a fixed pause.
    targets = [*urls, topology.proxy_url]
    started = time.monotonic()
    answers = [predict(targets[i % 4], **bearer) for i in range(40)]
    refilled = (time.monotonic() - started) * KEY_RATE / 60
    statuses = Counter(a.status_code for a in answers)
    assert statuses[200] <= KEY_RATE / 6 + refilled + 1, statuses
    assert set(statuses) == {200, 429}, statuses
    limited = [a for a in answers if a.status_code == 429]
    assert all(float(a.headers["retry-after"]) >= 1 for a in limited)
    # The proxy's requests drew on the same bucket: most of them were refused too.
    through = Counter(a.status_code for a in answers[3::4])
    assert through[429] >= through[200], through


def test_an_ab_client_gets_the_same_arm_from_every_replica(topology: Topology) -> None:
    started = topology.cli("ab", "start", "--candidate", CANDIDATE, "--share", "0.5")
    assert started.returncode == 0, started.stderr
    try:

        def versions(client: str) -> set[str]:
            answers = [predict(url, **{"x-client-id": client}) for url in replica_urls(topology)]
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            return {a.json()["model"]["version"] for a in answers}

        candidate_version = CANDIDATE.split(":")[1]
        until(
            lambda: any(candidate_version in versions(f"c{i}") for i in range(20)),
            what="the experiment reaches the replicas",
        )
        time.sleep(1.5)  # every replica has polled by now (model_poll_s 0.5)
        arms = [versions(f"client-{i}") for i in range(24)]
        assert all(len(arm) == 1 for arm in arms), arms  # one arm per client, everywhere
        assert len({next(iter(arm)) for arm in arms}) == 2  # and both arms are in use
    finally:
        stopped = topology.cli("ab", "stop")
        assert stopped.returncode == 0, stopped.stderr


def test_corrections_from_every_replica_land_in_one_database(topology: Topology) -> None:
    database = Database(topology.env["DIGITREC_DATABASE_URL"])
    try:
        with database.session() as session:
            before = session.scalar(select(func.count()).select_from(CorrectionRow)) or 0
        for url in replica_urls(topology):
            answer = predict(url).json()
            correction = {"prediction_id": answer["prediction_id"], "label": 1}

            def sent(url: str = url, correction: dict[str, Any] = correction) -> bool:
                reply = httpx.post(
                    f"{url}/api/v1/feedback", json=correction, headers=somebody(), timeout=10
                )
                return reply.status_code == 200  # 404 until the answer's log is written

            until(sent, what=f"a correction on {url}")
        with database.session() as session:
            after = session.scalar(select(func.count()).select_from(CorrectionRow))
        assert after == before + 3
    finally:
        database.dispose()


def test_a_replica_restarted_under_load_loses_no_request(topology: Topology) -> None:
    stop = threading.Event()
    statuses: Counter[int | str] = Counter()

    def client() -> None:
        with httpx.Client(base_url=topology.proxy_url, timeout=30) as http:
            while not stop.is_set():
                try:
                    headers = {"content-type": "image/png", **somebody()}
                    reply = http.post(PREDICT, content=SEVEN, headers=headers)
                    statuses[reply.status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(client)
        time.sleep(1)
        replica = topology.replicas[1]
        assert replica.stop(timeout=60) == 0  # SIGTERM: not ready, then drain, then exit 0
        replica.start_again()
        replica.wait_ready()
        time.sleep(3)  # HAProxy takes it back (rise 2 checks, 1 s apart)
        stop.set()
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 50


def test_a_dead_database_gives_clear_503s_and_service_comes_back(topology: Topology) -> None:
    topology.postgres.halt()
    try:
        for url in replica_urls(topology):
            until(
                lambda url=url: httpx.get(url + "/readyz", timeout=5).status_code == 503,
                what=f"{url} says it is not ready",
            )
            reason = httpx.get(url + "/readyz", timeout=5).json()["reason"]
            assert "database" in reason
        # HAProxy takes a replica out after two failed checks, a second apart.
        until(lambda: predict(topology.proxy_url).status_code == 503, what="no replica in use")
        through = predict(topology.proxy_url)
        assert through.headers["content-type"].startswith("application/json")
        assert through.json()["error"]["code"] == "unavailable"  # deploy/haproxy.cfg's answer
    finally:
        topology.postgres.resume()
    until(lambda: predict(topology.proxy_url).status_code == 200, what="service is back")
    for url in replica_urls(topology):
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
