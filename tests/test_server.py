"""The real server process on loopback: every input route, golden images, the web page,
and a graceful stop on SIGTERM with requests in flight."""

from __future__ import annotations

import base64
import concurrent.futures
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = [pytest.mark.server]
GOLDEN = Path(__file__).parent / "golden"
PREDICT = "/api/v1/predict"


def test_every_input_route_over_http(live_server: LiveServer) -> None:
    raw = (GOLDEN / "canvas_transparent_7.png").read_bytes()
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        answers = [
            http.post(PREDICT, files={"image": ("seven.png", raw, "image/png")}),
            http.post(PREDICT, content=raw, headers={"content-type": "image/png"}),
            http.post(PREDICT, json={"image": base64.b64encode(raw).decode()}),
            http.post(
                PREDICT, json={"image": "data:image/png;base64," + base64.b64encode(raw).decode()}
            ),
        ]
        for response in answers:
            assert response.status_code == 200, response.text
            assert response.json()["digit"] == 7
        card = http.get("/api/v1/model").json()
        assert card["backend"] == "onnx"
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "'unsafe-inline'" not in page.headers["content-security-policy"]


def test_golden_photo_over_http(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        response = http.post(
            PREDICT,
            content=(GOLDEN / "photo_paper_3.jpg").read_bytes(),
            headers={"content-type": "image/jpeg"},
        )
    assert response.status_code == 200 and response.json()["digit"] == 3


def test_sigterm_finishes_in_flight_requests(tmp_path: Path) -> None:
    server = LiveServer(tmp_path, env={"DIGITREC_RATE_LIMIT_PER_MINUTE": "0"})
    try:
        server.wait_ready()
        raw = (GOLDEN / "photo_paper_3.jpg").read_bytes()

        def one(_: int) -> int:
            with httpx.Client(base_url=server.url, timeout=20) as http:
                return http.post(
                    PREDICT, content=raw, headers={"content-type": "image/jpeg"}
                ).status_code

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(48)]
            time.sleep(0.15)  # requests are in flight now
            server.process.send_signal(signal.SIGTERM)
            results = []
            for future in futures:
                try:
                    results.append(future.result())
                except httpx.ConnectError:
                    results.append(-1)  # refused: sent after the server stopped accepting
                except httpx.TransportError:
                    results.append(-2)  # accepted, then dropped: must never happen
        code = server.process.wait(timeout=30)
    finally:
        server.stop()
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the status says "terminated".
    assert code in (0, -signal.SIGTERM), server.log.read_text()[-2000:]
    assert 200 in results
    assert set(results) <= {200, -1}, results  # an accepted request is always answered
    log = server.log.read_text()
    assert "Traceback" not in log and "Finished server process" in log
