"""/readyz tells a load balancer the truth, from a real server process: "shutting down"
for a while after SIGTERM (requests still served), and "database unreachable" while the
lifecycle database (a private PostgreSQL) is down, at start-up or later."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from digitrec.db import Database
from tests.conftest import LiveServer, PostgresServer

pytestmark = [pytest.mark.server]
GOLDEN = Path(__file__).parent / "golden"
PREDICT = "/api/v1/predict"


def wait_readyz(server: LiveServer, status: int, timeout: float = 15) -> dict[str, Any]:
    """Poll /readyz until it answers ``status``; its body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{server.url}/readyz", timeout=2)
            last = (response.status_code, response.text)
            if response.status_code == status:
                body: dict[str, Any] = response.json()
                return body
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"/readyz never answered {status}; last: {last!r}")


def predict_seven(server: LiveServer) -> int:
    raw = (GOLDEN / "canvas_transparent_7.png").read_bytes()
    response = httpx.post(
        server.url + PREDICT, content=raw, headers={"content-type": "image/png"}, timeout=10
    )
    assert response.status_code != 200 or response.json()["digit"] == 7
    return response.status_code


def port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_says_shutting_down_while_still_serving(tmp_path: Path, workers: int) -> None:
    server = LiveServer(
        tmp_path,
        env={"DIGITREC_SHUTDOWN_DELAY_S": "4", "DIGITREC_RATE_LIMIT_PER_MINUTE": "0"},
        args=("--workers", str(workers)),
    )
    try:
        server.wait_ready()
        server.process.send_signal(signal.SIGTERM)
        body = wait_readyz(server, 503, timeout=3)
        assert body == {"ready": False, "model": None, "reason": "shutting down"}
        assert predict_seven(server) == 200  # a new connection, still accepted and answered
        assert server.process.poll() is None
        code = server.process.wait(timeout=30)
    finally:
        server.stop()
    log = server.log.read_text()
    assert code == 0, log[-2000:]
    assert port_closed(server.port)
    assert "draining: no new connections" in log and "Traceback" not in log


def test_readiness_follows_the_database(tmp_path: Path, private_postgres: PostgresServer) -> None:
    """Down at start-up: the server comes up not ready, then migrates and is ready once
    the database answers. Down later: not ready (predictions still answered), then ready
    again."""
    url = private_postgres.url()
    private_postgres.halt()
    server = LiveServer(tmp_path, env={"DIGITREC_DATABASE_URL": url, "DIGITREC_DB_CHECK_S": "0.3"})
    try:
        body = wait_readyz(server, 503, timeout=60)  # the model loads, the database is down
        while body["reason"] == "the model is still loading":
            body = wait_readyz(server, 503)
        assert body["reason"].startswith("database unreachable: "), body
        assert predict_seven(server) == 200  # the shipped model answers meanwhile

        private_postgres.resume()
        assert wait_readyz(server, 200)["ready"] is True
        db = Database(url)
        try:
            assert db.has_table("predictions")  # migrated when it appeared
        finally:
            db.dispose()

        private_postgres.halt()
        body = wait_readyz(server, 503)
        assert body["reason"].startswith("database unreachable: "), body
        assert predict_seven(server) == 200
        private_postgres.resume()
        assert wait_readyz(server, 200)["ready"] is True
    finally:
        code = server.stop()
    assert code == 0
    log = server.log.read_text()
    assert log.count("service: the database does not answer") == 1, log[-3000:]  # per outage
    assert "Traceback" not in log
