"""GET /api/v1/stats: the dashboard's figures equal what was sent, on an empty
installation too, computed with SQL that both databases run, behind the API's access
control."""

from __future__ import annotations

import base64
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from digitrec import experiments, feedback, traffic
from digitrec.api import create_app, stats
from digitrec.config import Settings
from digitrec.data import Mnist
from digitrec.db import Database
from digitrec.keys import KeyStore
from digitrec.predict import Predictor
from digitrec.registry import BUNDLED_ROOT, Registry
from tests.conftest import mnist_png, prediction_record, store_answers

STATS = "/api/v1/stats"
PNG_URL = "data:image/png;base64,"


def _get(client: TestClient, **headers: str) -> dict[str, Any]:
    response = client.get(STATS, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_empty_installation_gives_empty_figures(client: TestClient) -> None:
    body = _get(client)
    traffic, draws, models = body["traffic"], body["draws"], body["models"]
    assert body["database"] is True
    assert traffic["predictions"] == 0 and traffic["latency_p50_ms"] is None
    assert traffic["requests"] == 0 and traffic["error_rate"] is None
    assert len(traffic["minutes"]) == 60
    assert all(m["predictions"] == 0 for m in traffic["minutes"])
    assert draws["predictions"] == 0 and draws["by_digit"] == [0] * 10
    assert draws["flagged_share"] is None and draws["confidence_counts"] == [0] * 10
    assert models["online"] == [] and models["experiment"] is None
    assert models["production"] is not None and models["candidate"] is None
    assert body["corrections"] == []
    shipped = {e.ref for e in Registry(BUNDLED_ROOT, extra_roots=()).list()}
    assert {v["ref"] for v in body["training"]} == shipped  # training figures ship
    for version in body["training"]:
        assert 0.9 < version["test_accuracy"] <= 1
        assert len(version["confusion_matrix"]) == 10 and len(version["per_class"]) == 10


def test_counts_equal_what_was_sent(client: TestClient, mnist: Mnist) -> None:
    sent = []
    for index in range(12):
        response = client.post(
            "/api/v1/predict",
            files={"image": ("d.png", mnist_png(mnist, index), "image/png")},
        )
        assert response.status_code == 200
        sent.append(response.json())
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.log.flush()
    corrected = {sent[0]["prediction_id"]: 3, sent[1]["prediction_id"]: None}
    for prediction_id, label in corrected.items():
        body = {"prediction_id": prediction_id, "label": label}
        assert client.post("/api/v1/feedback", json=body).status_code == 200
    confirmed = {"prediction_id": sent[2]["prediction_id"], "correct": True}
    assert client.post("/api/v1/feedback", json=confirmed).status_code == 200

    assert client.post("/api/v1/predict", content=b"not an image").status_code == 415
    unknown = {"prediction_id": "0" * 32, "label": 1}
    assert client.post("/api/v1/feedback", json=unknown).status_code == 404
    assert client.get("/healthz").status_code == 200  # not API traffic
    assert client.get(STATS).status_code == 200  # the dashboard's own polling: left out
    service.traffic.flush()
    client.app.state.stats_cache.at -= stats.CACHE_S  # type: ignore[attr-defined]

    body = _get(client)
    traffic, draws = body["traffic"], body["draws"]
    assert traffic["requests"] == 12 + 3 + 2  # predictions, feedback, the two errors
    assert traffic["client_errors"] == 2 and traffic["server_errors"] == 0
    assert traffic["error_rate"] == round(2 / 17, 4)
    assert traffic["requests"] == sum(m["requests"] for m in traffic["minutes"])
    assert traffic["predictions"] == 12 == sum(m["predictions"] for m in traffic["minutes"])
    assert traffic["latency_sample"] == 12 and traffic["latency_p50_ms"] is not None
    assert traffic["latency_p50_ms"] <= traffic["latency_p95_ms"]
    assert draws["predictions"] == 12
    assert draws["by_digit"] == [Counter(a["digit"] for a in sent)[d] for d in range(10)]
    assert draws["by_verdict"] == dict(Counter(a["verdict"] for a in sent))
    assert sum(draws["confidence_counts"]) == 12

    recent = body["corrections"]
    assert [c["prediction_id"] for c in recent][::-1] == [*corrected, sent[2]["prediction_id"]]
    by_id = {c["prediction_id"]: c for c in recent}
    for answer in sent[:3]:
        shown = by_id[answer["prediction_id"]]
        assert shown["digit"] == answer["digit"] and shown["image"].startswith(PNG_URL)
        assert base64.b64decode(shown["image"][len(PNG_URL) :])[:4] == b"\x89PNG"
    assert by_id[sent[0]["prediction_id"]]["label"] == 3
    assert by_id[sent[1]["prediction_id"]]["label"] is None
    assert by_id[sent[2]["prediction_id"]]["right"] is True

    (online,) = body["models"]["online"]
    assert online["model"] == body["models"]["production"]
    assert online["corrections"] == 3
    assert online["right"] == sum(c["right"] for c in recent)
    assert online["accuracy_low"] <= online["accuracy"] <= online["accuracy_high"]


def test_figures_are_reused_for_a_few_seconds(client: TestClient) -> None:
    first = _get(client)
    assert _get(client)["generated_at"] == first["generated_at"]
    client.app.state.stats_cache.at -= stats.CACHE_S  # type: ignore[attr-defined]
    assert _get(client)["cache_s"] == stats.CACHE_S


def test_documented_in_openapi(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    answer = schema["paths"][STATS]["get"]["responses"]["200"]["content"]
    assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/Stats"}
    assert {"Traffic", "Draws", "ModelsStats", "TrainingStats"} <= schema["components"][
        "schemas"
    ].keys()


def test_same_access_control_as_the_api(tmp_path: Path, predictor: Predictor) -> None:
    settings = Settings(
        home=tmp_path, require_api_key=True, rate_limit_per_minute=0, web_rate_limit_per_minute=0
    )
    _, secret = KeyStore.from_settings(settings).create("dashboard")
    browser = {"Sec-Fetch-Site": "same-origin"}
    with TestClient(create_app(settings, predictor)) as client:
        assert client.get(STATS).status_code == 401
        assert client.get(STATS, headers={"X-API-Key": "wrong"}).status_code == 401
        assert _get(client, Authorization=f"Bearer {secret}")["database"] is True
        token = client.get("/web/token", headers=browser).json()["token"]
        assert _get(client, **{"X-Web-Token": token, **browser})["traffic"]["window_s"] == 3600
        assert client.get(STATS, headers={"X-Web-Token": token}).status_code == 401


# --- the SQL itself, on SQLite and on PostgreSQL --------------------------------------------


def test_minutes_histogram_and_verdicts_in_sql(db: Database) -> None:
    # answers of one minute come at different seconds: a minute is one bucket, not sixty
    now = datetime.now(UTC).replace(second=50, microsecond=0)
    earlier = now - timedelta(minutes=3)
    records = [
        prediction_record(created_at=earlier - timedelta(seconds=45), latency_ms=10.0),
        prediction_record(created_at=earlier + timedelta(seconds=9.5), latency_ms=30.0),
        prediction_record(
            created_at=now - timedelta(seconds=50), digit=1, confidence=0.05, verdict="not_a_digit"
        ),
        prediction_record(created_at=now, digit=1, confidence=1.0),
        prediction_record(created_at=now - timedelta(hours=2), confidence=0.55),  # a day
        prediction_record(created_at=now - timedelta(days=2)),  # neither window
    ]
    store_answers(db, records)
    traffic = stats.traffic(db, now)
    assert traffic["predictions"] == 4 and traffic["latency_sample"] == 4
    busy = [m for m in traffic["minutes"] if m["predictions"]]
    assert [m["predictions"] for m in busy] == [2, 2]
    assert busy[0]["latency_p50_ms"] == 20.0
    assert busy[-1]["minute"] == now.replace(second=0, microsecond=0).isoformat("T", "minutes")
    draws = stats.draws(db, now)
    assert draws["predictions"] == 5
    assert draws["by_digit"][7] == 3 and draws["by_digit"][1] == 2
    assert draws["by_verdict"] == {"digit": 4, "not_a_digit": 1}
    assert draws["flagged_share"] == 0.2
    assert draws["confidence_counts"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 3]


def test_traffic_of_several_processes_adds_up_per_minute(db: Database) -> None:
    now = datetime.now(UTC)
    minute = int(now.timestamp()) // 60
    traffic.write(db, {minute - 2: (10, 2, 1), minute: (5, 0, 0)})  # one worker
    traffic.write(db, {minute: (7, 1, 0)})  # another
    traffic.write(db, {minute - 90: (100, 100, 0)})  # before the window
    figures = stats.traffic(db, now)
    assert figures["requests"] == 22 and figures["client_errors"] == 3
    assert figures["server_errors"] == 1 and figures["error_rate"] == round(4 / 22, 4)
    assert figures["per_second"] == round(22 / 3600, 4)
    busy = {m["minute"]: m for m in figures["minutes"] if m["requests"]}
    assert [m["requests"] for m in busy.values()] == [10, 12]
    assert figures["minutes"][-1]["client_errors"] == 1
    assert traffic.purge(db, now) == 0  # every row is younger than the retention
    assert traffic.purge(db, now + traffic.RETENTION - timedelta(minutes=30)) == 1  # the old
    assert traffic.purge(db, now + traffic.RETENTION + timedelta(minutes=1)) == 3


def test_traffic_counts_are_taken_once_and_kept_when_the_database_fails() -> None:
    counts = traffic.TrafficCounts()
    counts.note(200)
    assert counts.take() == {}  # no recorder: nothing is kept
    counts.recorders = 1
    for status in (200, 200, 404, 503):
        counts.note(status, at=120.0)
    counts.note(200, at=180.0)
    taken = counts.take()
    assert taken == {2: (4, 1, 1), 3: (1, 0, 0)} and counts.take() == {}
    counts.put_back(taken)
    counts.put_back({m: (1, 0, 0) for m in range(10, 10 + traffic.KEEP_MINUTES)})
    kept = counts.take()
    assert len(kept) == traffic.KEEP_MINUTES and 2 not in kept  # the oldest go first


def test_recorder_keeps_counts_while_the_database_is_down(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'no.db'}")  # never migrated: no traffic table
    counts = traffic.TrafficCounts()
    counts.recorders = 1
    recorder = traffic.TrafficRecorder(db, counts)
    counts.note(500, at=60.0)
    recorder.flush()  # fails: one warning, the counts stay
    assert counts.take() == {1: (1, 0, 1)}


@pytest.mark.parametrize(
    ("route", "counted"),
    [("/api/v1/predict", True), ("/api/v1/feedback", True), (STATS, False), ("/metrics", False)],
)
def test_which_requests_are_traffic(route: str, counted: bool) -> None:
    assert traffic.counted(route) is counted


def test_ab_verdict_comes_from_abstats(db: Database) -> None:
    exp = experiments.start(db, "digitnet:cand", "digitnet:prod", 0.5)
    records = [
        prediction_record(model=f"digitnet:{arm[:4]}", arm=arm, experiment_id=exp.id)
        for arm in ("production", "candidate")
        for _ in range(3)
    ]
    store_answers(db, records)
    for record in records[:2] + records[3:4]:
        feedback.record_feedback(db, record.id, 7)
    models = stats.models(db, ("digitnet:prod", "digitnet:cand"))
    ab = models["experiment"]
    assert ab["running"] is True and ab["verdict"] == "not_enough_data"
    arms = {a["arm"]: a for a in ab["arms"]}
    assert arms["production"]["corrections"] == 2 and arms["candidate"]["corrections"] == 1
    assert arms["candidate"]["requests"] == 3
    assert {o["model"]: o["corrections"] for o in models["online"]} == {
        "digitnet:prod": 2,
        "digitnet:cand": 1,
    }


def test_training_reads_the_manifest_and_the_run_folder(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models", extra_roots=())
    manifest = {
        "architecture": {"name": "tiny"},
        "run": "run-1",
        "created_at": "2026-11-30T10:00:00+00:00",
        "calibration": {"test_ece_before": 0.02, "test_ece_after": 0.01},
        "metrics": {
            "test_accuracy": 0.5,
            "confusion_matrix": [[1, 1], [0, 2]],
            "per_class": [{"digit": 0, "precision": 1.0, "recall": 0.5, "f1": 0.6}],
        },
    }
    registry.save("tiny", "run-1", manifest, {})
    registry.save("tiny", "run-2", {**manifest, "run": "../escape"}, {})
    runs = tmp_path / "runs"
    (runs / "run-1").mkdir(parents=True)
    (runs / "run-1" / "metrics.csv").write_text(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds\n"
        "1,0.5,0.8,0.4,0.85,0.001,2.0\n2,0.3,0.9,,0.9,0.001,2.0\n"
    )
    first, second = stats.training(registry, runs)
    assert first["ece"] == 0.01 and first["test_accuracy"] == 0.5
    assert first["per_class"] == [{"digit": 0, "precision": 1.0, "recall": 0.5}]
    assert first["curves"] == {
        "epoch": [1, 2],
        "train_loss": [0.5, 0.3],
        "val_loss": [0.4, None],
        "train_accuracy": [0.8, 0.9],
        "val_accuracy": [0.85, 0.9],
    }
    assert second["curves"] is None  # a run that is not a folder name is not followed
    json.dumps(first)


def test_training_prefers_the_manifests_history_and_keeps_sound_mistakes(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models", extra_roots=())
    image = "data:image/png;base64,iVBORw0KGgo="
    mistake = {"index": 7, "label": 4, "predicted": 9, "confidence": 0.9, "image": image}
    manifest = {
        "architecture": {"name": "tiny"},
        "run": "gone",
        "created_at": "2026-11-30T10:00:00+00:00",
        "history": [
            {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.4},
            {"epoch": 2, "train_loss": 0.3, "train_accuracy": 0.9, "val_loss": 0.2},
        ],
        "metrics": {
            "test_accuracy": 0.99,
            "worst_mistakes": [
                mistake,
                {**mistake, "image": "javascript:alert(1)"},  # never shown
                {"index": 1},  # incomplete
                "nonsense",
            ],
        },
    }
    registry.save("tiny", "v1", manifest, {})
    (version,) = stats.training(registry, tmp_path / "runs")
    assert version["curves"]["epoch"] == [1, 2]
    assert version["curves"]["val_loss"] == [0.4, 0.2]
    assert version["curves"]["val_accuracy"] == [None, None]
    assert version["mistakes"] == [mistake]


def test_no_database_gives_empty_sections(settings: Settings) -> None:
    body = stats.compute(settings, None, (None, None))
    assert body["database"] is False and body["corrections"] == []
    assert body["traffic"]["predictions"] == 0 and body["models"]["production"] is None


@pytest.mark.parametrize("name", ["ok", "", ".hidden", "a/b"])
def test_run_names_are_plain(name: str) -> None:
    assert stats._plain_name(name) is (name == "ok")
