"""The model lifecycle end to end: promote and roll back (a real server follows them under
load), A/B assignment through the API, corrections, `ab status`, `models list`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from digitrec.api.app import create_app
from digitrec.config import Settings
from digitrec.registry import BUNDLED_ROOT, Registry
from tests.conftest import MNIST_CACHE, LiveServer, encode
from tests.handwriting import DIGITS, placed

PREDICT = "/api/v1/predict"
FEEDBACK = "/api/v1/feedback"
BUNDLED = [e.ref for e in Registry(BUNDLED_ROOT, extra_roots=()).list() if not e.dry_run]
SHIPPED, OLDER = BUNDLED[-1], BUNDLED[0]


def cli(
    home: Path, *args: str, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env_db = ["--database-url", database_url] if database_url else []
    return subprocess.run(
        [sys.executable, "-m", "digitrec.cli", *args, "--home", str(home), *env_db],
        capture_output=True,
        text=True,
        timeout=120,
        env={"DIGITREC_DATA_DIR": str(MNIST_CACHE), "PATH": "/usr/bin:/bin"},
    )


def version(ref: str) -> str:
    return ref.partition(":")[2]


def image() -> bytes:
    """A 7 drawn on a transparent 280x280 canvas, as the page sends it."""
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for stroke in placed(DIGITS["7"], 0.6):
        draw.line([(x * 280, y * 280) for x, y in stroke], fill=(0, 0, 0, 255), width=14)
    return encode(canvas)


@pytest.fixture
def lifecycle_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        data_dir=MNIST_CACHE,
        database_url=database_url,
        model_poll_s=0.2,
        log_flush_s=0.05,
        rate_limit_per_minute=0,
        web_rate_limit_per_minute=0,
    )


def test_models_list_shows_production_and_promote_rollback_move_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    listed = json.loads(cli(home, "models", "list", "--json").stdout)
    assert {m["version"]: m["alias"] for m in listed}[version(SHIPPED)] == "production"
    promoted = cli(home, "models", "promote", version(OLDER))
    assert promoted.returncode == 0, promoted.stderr
    listed = json.loads(cli(home, "models", "list", "--json").stdout)
    assert {m["version"]: m["alias"] for m in listed}[version(OLDER)] == "production"
    assert "production" in cli(home, "models", "list").stdout
    back = cli(home, "models", "rollback")
    assert back.returncode == 0 and "shipped" in back.stdout, back.stderr
    again = cli(home, "models", "rollback")
    assert again.returncode != 0 and "nothing to roll back" in again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1
    unknown = cli(home, "models", "promote", "no-such-version")
    assert unknown.returncode != 0 and "no model" in unknown.stderr


def test_answers_name_their_model_and_carry_an_id(lifecycle_settings: Settings) -> None:
    with TestClient(create_app(lifecycle_settings)) as client:
        body = client.post(PREDICT, content=image(), headers={"content-type": "image/png"}).json()
        assert body["model"]["version"] == version(SHIPPED)
        assert len(body["prediction_id"]) == 32 and body.get("arm") is None


def test_corrections_are_stored_replaced_and_refused_when_unknown(
    lifecycle_settings: Settings,
) -> None:
    from digitrec.db import Database
    from digitrec.feedback import list_feedback

    with TestClient(create_app(lifecycle_settings)) as client:
        answer = client.post(PREDICT, content=image(), headers={"content-type": "image/png"})
        pid = answer.json()["prediction_id"]
        first = client.post(FEEDBACK, json={"prediction_id": pid, "label": 1})
        assert first.status_code == 200, first.text
        assert first.json()["right"] is (answer.json()["digit"] == 1)
        second = client.post(FEEDBACK, json={"prediction_id": pid, "label": None})
        assert second.status_code == 200 and second.json()["label"] is None
        assert "input_28x28" in second.json()["stored"]
        right = client.post(FEEDBACK, json={"prediction_id": pid, "correct": True})
        assert right.status_code == 200 and right.json()["right"] is True
        missing = client.post(FEEDBACK, json={"prediction_id": "0" * 32, "label": 3})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "prediction_not_found"
        for bad in (
            {"prediction_id": pid},
            {"prediction_id": pid, "label": 3, "correct": True},
            {"prediction_id": pid, "label": 12},
            {"prediction_id": "../etc", "label": 3},
            {"prediction_id": pid, "correct": False},
        ):
            refused = client.post(FEEDBACK, json=bad)
            assert refused.status_code == 422, bad
            assert refused.json()["error"]["code"] == "validation_error"
    db = Database(lifecycle_settings.database)
    try:
        stored = list_feedback(db, limit=10)
    finally:
        db.dispose()
    assert [c.prediction_id for c in stored] == [pid]  # one row, the last correction
    assert stored[0].input.shape == (28, 28) and stored[0].right is True


def test_a_correction_waits_for_its_answer_while_the_database_is_busy(tmp_path: Path) -> None:
    """An answer still queued in the log, because another writer holds SQLite's lock for
    longer than the log's flush interval, is written and then found, not called unknown."""
    import sqlite3

    path = tmp_path / "busy.db"
    settings = Settings(
        home=tmp_path / "home",
        data_dir=MNIST_CACHE,
        database_url=f"sqlite:///{path}",
        log_flush_s=0.05,
        rate_limit_per_minute=0,
        web_rate_limit_per_minute=0,
    )
    with TestClient(create_app(settings)) as client:
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # a real write lock: the log's insert must wait
        try:
            answer = client.post(PREDICT, content=image(), headers={"content-type": "image/png"})
            release = threading.Timer(1.0, holder.execute, ("COMMIT",))
            release.start()
            started = time.monotonic()
            fixed = client.post(
                FEEDBACK, json={"prediction_id": answer.json()["prediction_id"], "label": 7}
            )
            waited = time.monotonic() - started
            release.join()
        finally:
            holder.close()
        assert fixed.status_code == 200, fixed.text
        assert waited >= 0.5  # it did wait for the lock's release
        assert fixed.json()["label"] == 7


def test_ab_assignment_is_sticky_and_each_answer_names_its_model(
    lifecycle_settings: Settings,
) -> None:
    from digitrec import experiments
    from digitrec.db import Database

    db = Database(lifecycle_settings.database)
    db.migrate()
    experiments.start(db, OLDER, SHIPPED, 0.5)
    db.dispose()
    with TestClient(create_app(lifecycle_settings)) as client:
        seen: dict[str, set[tuple[str, str]]] = {}
        for _ in range(2):
            for n in range(12):
                headers = {"content-type": "image/png", "x-client-id": f"user-{n}"}
                body = client.post(PREDICT, content=image(), headers=headers).json()
                seen.setdefault(f"user-{n}", set()).add((body["arm"], body["model"]["version"]))
        assert all(len(pairs) == 1 for pairs in seen.values()), "a client changed arms"
        arms = Counter(next(iter(p))[0] for p in seen.values())
        assert arms["candidate"] > 0 and arms["production"] > 0
        for ((arm, served),) in (tuple(p) for p in seen.values()):
            assert served == version(OLDER if arm == "candidate" else SHIPPED)
        anonymous = client.post(PREDICT, content=image(), headers={"content-type": "image/png"})
        assert anonymous.json().get("arm") is None
        assert anonymous.json()["model"]["version"] == version(SHIPPED)
        page = client.get("/")
        cookie = page.cookies.get("digitrec_client")
        assert cookie and len(cookie) == 32
        too_long = client.post(
            PREDICT,
            content=image(),
            headers={"content-type": "image/png", "x-client-id": "x" * 200},
        )
        assert too_long.status_code == 422


def test_ab_status_reports_both_arms_after_corrections(
    lifecycle_settings: Settings, tmp_path: Path
) -> None:
    home = lifecycle_settings.home
    url = lifecycle_settings.database
    started = cli(
        home, "ab", "start", "--candidate", version(OLDER), "--share", "0.5", database_url=url
    )
    assert started.returncode == 0, started.stderr
    twice = cli(home, "ab", "start", "--candidate", version(OLDER), database_url=url)
    assert twice.returncode != 0 and "Traceback" not in twice.stderr
    with TestClient(create_app(lifecycle_settings)) as client:
        for n in range(16):
            headers = {"content-type": "image/png", "x-client-id": f"u{n}"}
            pid = client.post(PREDICT, content=image(), headers=headers).json()["prediction_id"]
            assert client.post(FEEDBACK, json={"prediction_id": pid, "label": 7}).status_code == 200
    status = cli(home, "ab", "status", "--json", database_url=url)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    arms = report["arms"]
    assert arms["production"]["requests"] + arms["candidate"]["requests"] == 16
    assert arms["production"]["corrections"] + arms["candidate"]["corrections"] == 16
    assert report["verdict"] == "not_enough_data"
    text = cli(home, "ab", "status", database_url=url).stdout
    assert "production" in text and "candidate" in text and "verdict" in text
    stopped = cli(home, "ab", "stop", "--promote", database_url=url)
    assert stopped.returncode == 0, stopped.stderr
    listed = json.loads(cli(home, "models", "list", "--json", database_url=url).stdout)
    assert {m["version"]: m["alias"] for m in listed}[version(OLDER)] == "production"


@pytest.mark.server
@pytest.mark.slow
def test_a_running_server_follows_promotion_and_rollback_under_load(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = LiveServer(
        home,
        env={"DIGITREC_MODEL_POLL_S": "0.5", "DIGITREC_RATE_LIMIT_PER_MINUTE": "0"},
        args=("--workers", "2"),
    )
    failures: list[Any] = []
    versions: list[tuple[float, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                r = http.post(PREDICT, content=image(), headers={"content-type": "image/png"})
                if r.status_code != 200:
                    failures.append((r.status_code, r.text[:200]))
                else:
                    versions.append((time.monotonic(), r.json()["model"]["version"]))

    try:
        server.wait_ready()
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1)
        promoted_at = time.monotonic()
        assert cli(home, "models", "promote", version(OLDER)).returncode == 0
        _wait_for(versions, version(OLDER), promoted_at)
        rolled_at = time.monotonic()
        assert cli(home, "models", "rollback").returncode == 0
        _wait_for(versions, version(SHIPPED), rolled_at)
        stop.set()
        for t in threads:
            t.join()
    finally:
        stop.set()
        server.stop()
    assert not failures, failures[:5]
    assert len(versions) > 50


def _wait_for(versions: list[tuple[float, str]], wanted: str, since: float) -> None:
    """Until every answer after a settling time comes from ``wanted`` (both workers)."""
    deadline = since + 10
    while time.monotonic() < deadline:
        recent = [v for t, v in versions[-20:] if t > since]
        if len(recent) == 20 and set(recent) == {wanted}:
            return
        time.sleep(0.1)
    raise AssertionError(f"the server did not switch to {wanted} within 10 s: {versions[-20:]}")


def test_uploads_are_kept_with_a_correction_only_when_the_operator_asks(
    lifecycle_settings: Settings,
) -> None:
    from digitrec.db import Database
    from digitrec.feedback import list_feedback

    raw = image()
    assert len(raw) > 1024
    for name, store, cap in (("off", False, 10**6), ("on", True, 10**6), ("too big", True, 1024)):
        settings = lifecycle_settings.model_copy(
            update={"store_uploads": store, "store_upload_max_bytes": cap}
        )
        with TestClient(create_app(settings)) as client:
            answer = client.post(PREDICT, content=raw, headers={"content-type": "image/png"})
            pid = answer.json()["prediction_id"]
            stored = client.post(FEEDBACK, json={"prediction_id": pid, "correct": True}).json()
            assert ("upload" in stored["stored"]) is (name == "on")
    db = Database(lifecycle_settings.database)
    try:
        uploads = {c.prediction_id: c.upload for c in list_feedback(db, limit=10)}
    finally:
        db.dispose()
    assert sorted(u is not None for u in uploads.values()) == [False, False, True]
    assert raw in uploads.values()


def test_an_answer_past_its_correction_window_cannot_be_corrected(
    lifecycle_settings: Settings,
) -> None:
    settings = lifecycle_settings.model_copy(update={"correction_window_s": 0.5})
    with TestClient(create_app(settings)) as client:
        answer = client.post(PREDICT, content=image(), headers={"content-type": "image/png"})
        time.sleep(1.0)
        late = client.post(
            FEEDBACK, json={"prediction_id": answer.json()["prediction_id"], "label": 7}
        )
        assert late.status_code == 404
        assert "erased" in late.json()["error"]["message"]
