"""GET /metrics: the counts a Prometheus scrape reads match the traffic that was sent, in
one process and summed over several workers; protected like the API when keys are on."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from digitrec.api import create_app, metrics
from digitrec.config import Settings
from digitrec.data import Mnist
from digitrec.keys import KeyStore
from digitrec.predict import Predictor
from tests.conftest import LiveServer, Samples, mnist_png, parse_metrics, total, value

PREDICT = "/api/v1/predict"
FEEDBACK = "/api/v1/feedback"
PNG = {"content-type": "image/png"}


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse_metrics(response.text)


def label_values(samples: Samples) -> set[str]:
    return {v for _, labels in samples for _, v in labels}


@pytest.mark.mnist
def test_counts_match_what_was_sent(client: TestClient, mnist: Mnist) -> None:
    # Counters are per process (tests share it): compare with a scrape taken before.
    before = scrape(client)
    good = [client.post(PREDICT, content=mnist_png(mnist, i), headers=PNG) for i in range(5)]
    answers = [r.json() for r in good]
    version = answers[0]["model"]["version"]
    bad = [
        client.post(PREDICT, content=b"hi", headers={"content-type": "text/plain"}),
        client.post(PREDICT, content=b"", headers=PNG),
        client.post(PREDICT, content=b"\x89PNG\r\n\x1a\n broken", headers=PNG),
        client.post(PREDICT, content=b"\x89PNG\r\n\x1a\n also broken", headers=PNG),
    ]
    correction = {"prediction_id": answers[0]["prediction_id"], "label": 9}
    assert client.post(FEEDBACK, json=correction).status_code == 200
    after = scrape(client)

    def sent(metric: str, /, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert {r.status_code for r in good} == {200}
    assert sent("digitrec_requests_total", route=PREDICT, status="200", model_version=version) == 5
    assert sent("digitrec_requests_total", route=FEEDBACK, status="200", model_version=version) == 1
    statuses = Counter(str(r.status_code) for r in bad)
    codes = Counter(r.json()["error"]["code"] for r in bad)
    assert len(codes) >= 2 and min(map(int, statuses)) >= 400
    for status, count in statuses.items():
        labels = {"route": PREDICT, "status": status, "model_version": "none"}
        assert sent("digitrec_requests_total", **labels) == count
    for code, count in codes.items():
        assert sent("digitrec_errors_total", route=PREDICT, code=code) == count
    for (digit, verdict), count in Counter(
        (str(a["digit"]), a["verdict"]) for a in answers
    ).items():
        labels = {"model_version": version, "digit": digit, "verdict": verdict}
        assert sent("digitrec_predictions_total", **labels) == count
    right = "true" if answers[0]["digit"] == 9 else "false"
    assert sent("digitrec_corrections_total", model_version=version, right=right) == 1
    assert sent("digitrec_prediction_confidence_count", model_version=version) == 5
    top = sum(a["confidence"] for a in answers)
    assert sent("digitrec_prediction_confidence_sum", model_version=version) == pytest.approx(top)
    for stage in ("prepare", "infer"):
        labels = {"model_version": version, "stage": stage}
        assert sent("digitrec_model_duration_seconds_count", **labels) == 5
    assert sent("digitrec_request_duration_seconds_count", route=PREDICT) == len(good) + len(bad)
    name = answers[0]["model"]["name"]
    production = {"role": "production", "name": name, "version": version}
    assert value(after, "digitrec_model_info", **production) == 1
    assert value(after, "digitrec_process_resident_memory_bytes") > 10_000_000
    assert value(after, "process_resident_memory_bytes") > 0  # the client's own, one process


def test_unknown_paths_add_no_label_values(client: TestClient) -> None:
    before = scrape(client)
    probes = ["/wp-admin/x1y2z3", "/api/v1/predict-x1y2z3", "/api/v2/x1y2z3/..%2f"]
    for path in probes:
        assert client.get(path).status_code == 404
    assert client.post("/api/v1/x1y2z3", content=b"zz").status_code == 404
    after = scrape(client)
    assert not [v for v in label_values(after) if "x1y2z3" in v]
    other = {"route": metrics.OTHER_ROUTE, "status": "404", "model_version": "none"}
    sent = value(after, "digitrec_requests_total", **other)
    assert sent - value(before, "digitrec_requests_total", **other) == 4
    # A path that a route serves keeps its template, even for a method it does not take.
    assert client.get(PREDICT).status_code == 405
    refused = {"route": PREDICT, "status": "405", "model_version": "none"}
    assert value(scrape(client), "digitrec_requests_total", **refused) >= 1


def test_an_answer_before_routing_keeps_its_route(settings: Settings, predictor: Predictor) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 1024})
    with TestClient(create_app(small, predictor)) as client:
        before = total(scrape(client), "digitrec_errors_total", route=PREDICT)
        response = client.post(PREDICT, content=b"x" * 100_000, headers=PNG)
        assert response.status_code == 413
        assert total(scrape(client), "digitrec_errors_total", route=PREDICT) == before + 1


def test_metrics_need_a_key_when_keys_are_on(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(home=tmp_path, require_api_key=True, rate_limit_per_minute=0)
    _, secret = KeyStore.from_settings(settings).create("prometheus")
    with TestClient(create_app(settings, predictor)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "api_key_required"
        assert client.get("/metrics", headers={"X-API-Key": "dr_wrong"}).status_code == 401
        samples = scrape(client, Authorization=f"Bearer {secret}")
        assert total(samples, "digitrec_errors_total", code="api_key_required") >= 1
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_two_apps_in_one_process(settings: Settings, predictor: Predictor) -> None:
    """Metrics are declared once per process: a second app does not register them again."""
    with (
        TestClient(create_app(settings, predictor)) as first,
        TestClient(create_app(settings, predictor)) as second,
    ):
        assert first.get("/metrics").status_code == 200
        assert second.get("/metrics").status_code == 200


def test_multiprocess_folder_is_private_fresh_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    dead = tmp_path / f"{metrics.FOLDER_PREFIX}{2**22 + 12345}-old"  # over pid_max: no process
    dead.mkdir()
    (dead / "counter_99.db").write_bytes(b"stale")
    alive = tmp_path / f"{metrics.FOLDER_PREFIX}{os.getpid()}-running"
    alive.mkdir()
    with metrics.multiprocess_folder(1) as none:
        assert none is None and metrics.MULTIPROC_ENV not in os.environ
    with metrics.multiprocess_folder(2) as folder:
        assert folder is not None and folder.parent == tmp_path
        assert os.environ[metrics.MULTIPROC_ENV] == str(folder)
        assert list(folder.iterdir()) == []
        assert folder.stat().st_mode & 0o077 == 0  # this user's alone
        assert not dead.exists() and alive.exists()  # a live server's folder is left alone
    assert not folder.exists()
    assert metrics.MULTIPROC_ENV not in os.environ


def fetch(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request on a connection of its own (new connections spread over the workers)."""
    request = urllib.request.Request(
        url, data=data, headers={"Connection": "close", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status), response.read()


@pytest.mark.server
@pytest.mark.mnist
@pytest.mark.slow
def test_workers_add_up(tmp_path: Path, mnist: Mnist) -> None:
    server = LiveServer(
        tmp_path / "home",
        env={"DIGITREC_RATE_LIMIT_PER_MINUTE": "0", "DIGITREC_WEB_RATE_LIMIT_PER_MINUTE": "0"},
        args=("--workers", "2"),
    )
    folders = f"{metrics.FOLDER_PREFIX}{server.process.pid}-*"
    try:
        server.wait_ready()
        [folder] = Path(tempfile.gettempdir()).glob(folders)
        sent = 16
        for i in range(sent):
            assert fetch(f"{server.url}{PREDICT}", mnist_png(mnist, i), PNG)[0] == 200
        scrapes: list[dict[str, Any]] = []
        for _ in range(6):  # whichever worker answers, it reports both workers' counts
            samples = parse_metrics(fetch(f"{server.url}/metrics")[1].decode())
            memory = [s for s in samples if s[0] == "digitrec_process_resident_memory_bytes"]
            scrapes.append(
                {
                    "requests": total(samples, "digitrec_requests_total", route=PREDICT),
                    "predictions": total(samples, "digitrec_predictions_total"),
                    "pids": {dict(labels).get("pid") for _, labels in memory},
                }
            )
        assert all(s["requests"] == sent and s["predictions"] == sent for s in scrapes), scrapes
        assert all(len(s["pids"]) == 2 for s in scrapes), scrapes  # one series per worker
    finally:
        assert server.stop() == 0, server.log.read_text()[-2000:]
    assert not folder.exists()  # removed with the server


def test_model_versions_are_published_at_the_switch(settings: Settings) -> None:
    """digitrec_model_info changes when a worker switches models, before any request."""
    import asyncio

    from digitrec.api.models import ModelSet, Wanted
    from digitrec.registry import BUNDLED_ROOT, Registry

    old, new = Registry(BUNDLED_ROOT, extra_roots=()).list()[:2]

    def info(entry: Any, role: str) -> float:
        labels = {"role": role, "name": entry.name, "version": entry.version}
        return value(parse_metrics(metrics.exposition().decode()), "digitrec_model_info", **labels)

    async def switch() -> list[float]:
        models = ModelSet(settings, None)
        await models.start(Predictor(old, backend="onnx", threads=1))
        seen = [info(old, "production"), info(new, "production")]
        await models._apply(Wanted(new, old, None))  # a promotion, with an A/B candidate
        seen += [info(old, "production"), info(new, "production"), info(old, "candidate")]
        await models.stop()
        return seen

    assert asyncio.run(switch()) == [1, 0, 0, 1, 1]


@pytest.mark.server
def test_refusals_before_the_app_are_counted(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "home")
    try:
        server.wait_ready()
        with pytest.raises(urllib.error.HTTPError) as refused:
            fetch(f"{server.url}{PREDICT}?{'x' * 70_000}")
        assert refused.value.code == 414
        samples = parse_metrics(fetch(f"{server.url}/metrics")[1].decode())
        assert value(samples, "digitrec_refused_total", reason="uri_too_long") == 1
        assert total(samples, "digitrec_requests_total", route=PREDICT) == 0  # never reached
    finally:
        assert server.stop() == 0
