"""Corrections: the answer log, recording corrections, retention and export (SQLite and
PostgreSQL)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, event, func, select, update

from digitrec.data import parse_idx
from digitrec.db import Database
from digitrec.db.tables import CorrectionRow, PredictionRow
from digitrec.errors import InvalidRequest, NotFound
from digitrec.feedback import (
    PredictionLog,
    client_hash,
    erase_inputs,
    export_feedback,
    feedback_dataset,
    list_feedback,
    new_prediction_id,
    purge_expired,
    record_feedback,
)
from tests.conftest import prediction_record, store_answers


def _count(db: Database, table: type[PredictionRow] | type[CorrectionRow]) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def _age(db: Database, prediction_id: str, days: float) -> None:
    """Make an answer look ``days`` old."""
    with db.session() as session:
        session.execute(
            update(PredictionRow)
            .where(PredictionRow.id == prediction_id)
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )


def _writing_transactions(db: Database) -> list[int]:
    """A list that grows by one for each committed transaction that wrote answers."""
    counted: list[int] = []

    def executing(connection: Connection, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO PREDICTIONS"):
            connection.info["wrote_answers"] = True

    def committed(connection: Connection) -> None:
        if connection.info.pop("wrote_answers", False):
            counted.append(1)

    event.listen(db.engine, "before_cursor_execute", executing)
    event.listen(db.engine, "commit", committed)
    return counted


def test_ids_and_client_hashes() -> None:
    ids = {new_prediction_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert client_hash(None) is None
    assert client_hash("key_1") == client_hash("key_1") != client_hash("key_2")
    assert re.fullmatch(r"[0-9a-f]{16}", client_hash("key_1") or "")


# --- the answer log -------------------------------------------------------------------------------


def test_the_log_writes_many_answers_in_few_transactions(db: Database) -> None:
    commits = _writing_transactions(db)
    log = PredictionLog(db, batch_size=200, flush_s=10, queue_max=5000)
    log.start()
    records = [prediction_record() for _ in range(2000)]
    for record in records:
        log.add(record)
    assert log.flush(timeout=30)
    assert _count(db, PredictionRow) == 2000
    assert len(commits) <= 2000 // 200 + 1  # full batches, and what flush() wrote
    log.stop()
    assert (log.written, log.dropped, log.failed) == (2000, 0, 0)


def test_waiting_for_one_answer_waits_only_for_an_answer_queued_here(tmp_path: Path) -> None:
    # Another writer holds SQLite's lock: the queued answer cannot be written until it
    # lets go. A correction of an id never queued here does not wait at all.
    import sqlite3
    import threading

    path = tmp_path / "busy.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    log = PredictionLog(db, batch_size=1000, flush_s=10)
    log.start()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        record = prediction_record()
        log.add(record)
        unknown = new_prediction_id()
        started = time.monotonic()
        assert not log.queued(unknown) and log.wait_written(unknown, timeout=5)
        assert time.monotonic() - started < 0.5
        assert log.queued(record.id) and not log.wait_written(record.id, timeout=0.3)
        threading.Timer(0.3, holder.execute, ("COMMIT",)).start()
        assert log.wait_written(record.id, timeout=10)  # written as soon as the lock goes
        assert not log.queued(record.id) and _count(db, PredictionRow) == 1
    finally:
        log.stop()
        holder.close()
        db.dispose()


def test_answers_trickling_in_wait_for_their_batch(db: Database) -> None:
    commits = _writing_transactions(db)
    log = PredictionLog(db, batch_size=1000, flush_s=10)
    log.start()
    for _ in range(40):
        log.add(prediction_record())
        time.sleep(0.005)
    assert _count(db, PredictionRow) == 0  # nothing due yet: not full, not old enough
    assert log.flush(timeout=30)
    assert _count(db, PredictionRow) == 40
    assert len(commits) == 1
    log.stop()


def test_an_answer_is_written_within_flush_s_without_a_flush(db: Database) -> None:
    log = PredictionLog(db, batch_size=500, flush_s=0.2)
    log.start()
    time.sleep(0.5)  # the writer is idle, waiting for work
    log.add(prediction_record())
    deadline = time.monotonic() + 5
    while _count(db, PredictionRow) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _count(db, PredictionRow) == 1
    log.stop()


def test_a_full_queue_drops_and_counts_without_blocking(db: Database) -> None:
    log = PredictionLog(db, batch_size=50, flush_s=10, queue_max=100)  # not started: no writer
    records = [prediction_record() for _ in range(150)]
    started = time.perf_counter()
    for record in records:
        log.add(record)
    assert time.perf_counter() - started < 1.0
    assert log.dropped == 50
    log.start()
    assert log.flush(timeout=30)
    assert _count(db, PredictionRow) == 100
    log.stop()


def test_stop_writes_what_is_queued_and_later_answers_are_dropped(db: Database) -> None:
    log = PredictionLog(db, batch_size=500, flush_s=30)
    log.start()
    for _ in range(10):
        log.add(prediction_record())
    log.stop()
    assert _count(db, PredictionRow) == 10
    log.add(prediction_record())
    assert log.dropped == 1
    assert _count(db, PredictionRow) == 10


def test_a_malformed_answer_is_skipped_and_the_others_written(db: Database) -> None:
    log = PredictionLog(db)
    log.add(prediction_record(input=np.zeros((14, 14), np.uint8)))
    log.add(prediction_record(created_at=datetime.now()))  # naive: no time zone
    log.add(prediction_record())
    log.start()
    assert log.flush(timeout=30)
    log.stop()
    assert (log.written, log.failed) == (1, 2)
    assert _count(db, PredictionRow) == 1


def test_a_database_error_loses_the_batch_but_not_the_log(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'lifecycle.db'}")  # never migrated: no tables
    log = PredictionLog(db)
    log.start()
    log.add(prediction_record())
    assert log.flush(timeout=30)
    assert log.failed == 1
    db.migrate()
    log.add(prediction_record())
    assert log.flush(timeout=30)
    log.stop()
    assert log.written == 1
    db.dispose()


def test_the_log_deletes_expired_answers_and_corrections_when_it_starts(db: Database) -> None:
    old, kept = prediction_record(), prediction_record()
    store_answers(db, [old, kept])
    record_feedback(db, old.id, label=3)
    _age(db, old.id, days=3)
    with db.session() as session:
        session.execute(
            update(CorrectionRow).values(corrected_at=datetime.now(UTC) - timedelta(days=3))
        )
    log = PredictionLog(db, prediction_retention_days=2, feedback_retention_days=2.5)
    log.start()
    deadline = time.monotonic() + 10
    while _count(db, CorrectionRow) and time.monotonic() < deadline:
        time.sleep(0.05)
    log.stop()
    with db.session() as session:
        assert session.scalars(select(PredictionRow.id)).all() == [kept.id]
    assert _count(db, CorrectionRow) == 0


def test_purge_keeps_a_correction_after_its_answer_is_gone(db: Database) -> None:
    answer = prediction_record()
    store_answers(db, [answer])
    record_feedback(db, answer.id, label=1)
    _age(db, answer.id, days=8)
    assert purge_expired(db, prediction_retention_days=7, feedback_retention_days=365) == (1, 0)
    assert _count(db, PredictionRow) == 0
    assert [c.prediction_id for c in list_feedback(db)] == [answer.id]


# --- recording corrections ------------------------------------------------------------------


def test_a_correction_copies_the_answer_it_corrects(db: Database) -> None:
    answer = prediction_record(
        arm="candidate", experiment_id=4, client_hash=client_hash("alice"), upload=b"\x89PNG.."
    )
    store_answers(db, [answer])
    stored = record_feedback(db, answer.id, label=1)
    assert (stored.prediction_id, stored.label, stored.right) == (answer.id, 1, False)
    assert (stored.model, stored.arm, stored.experiment_id) == (answer.model, "candidate", 4)
    assert (stored.client_hash, stored.digit, stored.verdict) == (answer.client_hash, 7, "digit")
    assert stored.confidence == pytest.approx(answer.confidence)
    assert stored.probabilities == pytest.approx(tuple(answer.probabilities))
    assert np.array_equal(stored.input, answer.input) and stored.input.dtype == np.uint8
    assert stored.upload == b"\x89PNG.."
    assert abs(stored.created_at - answer.created_at) < timedelta(milliseconds=1)
    assert stored.corrected_at >= stored.created_at
    assert "upload" in stored.stored_items() and "input_28x28" in stored.stored_items()
    [listed] = list_feedback(db)
    assert listed == stored


@pytest.mark.parametrize(
    ("verdict", "label", "correct", "stored_label", "right"),
    [
        ("digit", 7, None, 7, True),
        ("digit", 3, None, 3, False),
        ("digit", None, None, None, False),  # "not a digit" for an answered digit
        ("not_a_digit", None, None, None, True),
        ("not_a_digit", 7, None, 7, False),
        ("digit", None, True, 7, True),  # "correct": the answer is the label
        ("not_a_digit", None, True, None, True),
    ],
)
def test_whether_the_served_answer_was_right(
    db: Database,
    verdict: str,
    label: int | None,
    correct: bool | None,
    stored_label: int | None,
    right: bool,
) -> None:
    answer = prediction_record(digit=7, verdict=verdict)
    store_answers(db, [answer])
    stored = record_feedback(db, answer.id, label, correct)
    assert (stored.label, stored.right) == (stored_label, right)


def test_a_second_correction_replaces_the_first(db: Database) -> None:
    answer = prediction_record()
    store_answers(db, [answer])
    first = record_feedback(db, answer.id, label=3)
    second = record_feedback(db, answer.id, label=None)
    assert _count(db, CorrectionRow) == 1
    [stored] = list_feedback(db)
    assert (stored.label, stored.right) == (None, False)
    assert stored.corrected_at >= first.corrected_at
    assert stored == second


def test_an_unknown_prediction_id_is_not_found(db: Database) -> None:
    store_answers(db, [prediction_record()])
    for unknown in (new_prediction_id(), "not-an-id", ""):
        with pytest.raises(NotFound) as caught:
            record_feedback(db, unknown, label=1)
        assert (caught.value.code, caught.value.status) == ("prediction_not_found", 404)
    assert _count(db, CorrectionRow) == 0


def test_an_expired_prediction_is_not_found(db: Database) -> None:
    answer = prediction_record()
    store_answers(db, [answer])
    _age(db, answer.id, days=2)
    with pytest.raises(NotFound) as caught:
        record_feedback(db, answer.id, label=1, window_s=86400)
    assert (caught.value.code, caught.value.status) == ("prediction_not_found", 404)
    assert record_feedback(db, answer.id, label=1, window_s=3 * 86400).label == 1


def test_inputs_are_erased_after_the_correction_window(db: Database) -> None:
    old, recent = prediction_record(), prediction_record()
    store_answers(db, [old, recent])
    record_feedback(db, old.id, label=4)  # a correction keeps its own copy
    _age(db, old.id, days=1)
    assert erase_inputs(db, window_s=3600) == 1
    with db.session() as session:
        inputs = dict(session.execute(select(PredictionRow.id, PredictionRow.input)).all())
    assert inputs[old.id] is None and inputs[recent.id] is not None
    with pytest.raises(NotFound):
        record_feedback(db, old.id, label=5, window_s=10 * 86400)  # the image is gone
    assert list_feedback(db)[0].input.shape == (28, 28)


@pytest.mark.parametrize(
    "given",
    [
        {},  # neither
        {"label": 3, "correct": True},  # both
        {"correct": False},  # "wrong" says nothing about the right digit
        {"label": 3, "correct": False},
        {"label": 10},
        {"label": -1},
        {"label": True},
        {"label": "7"},
    ],
)
def test_exactly_one_of_a_label_or_correct_is_accepted(
    db: Database, given: dict[str, object]
) -> None:
    answer = prediction_record()
    store_answers(db, [answer])
    with pytest.raises(InvalidRequest):
        record_feedback(db, answer.id, **given)  # type: ignore[arg-type]
    assert _count(db, CorrectionRow) == 0


def test_list_feedback_newest_first_with_limit_and_since(db: Database) -> None:
    answers = [prediction_record() for _ in range(5)]
    store_answers(db, answers)
    for answer in answers[:3]:
        record_feedback(db, answer.id, label=1)
    middle = datetime.now(UTC)
    for answer in answers[3:]:
        record_feedback(db, answer.id, label=2)
    newest_first = [c.prediction_id for c in list_feedback(db)]
    assert newest_first == [a.id for a in reversed(answers)]
    assert [c.prediction_id for c in list_feedback(db, limit=2)] == newest_first[:2]
    assert {c.prediction_id for c in list_feedback(db, since=middle)} == {a.id for a in answers[3:]}


# --- corrections as data ----------------------------------------------------------------------


def _corrected(db: Database) -> tuple[list[np.ndarray], list[int]]:
    """Three corrected answers, oldest first: a 1, not a digit, a confirmed 7."""
    now = datetime.now(UTC)
    images = [np.full((28, 28), value, np.uint8) for value in (10, 20, 30)]
    answers = [
        prediction_record(input=image, created_at=now - timedelta(minutes=3 - i))
        for i, image in enumerate(images)
    ]
    store_answers(db, list(reversed(answers)))
    record_feedback(db, answers[2].id, correct=True)
    record_feedback(db, answers[1].id, label=None)
    record_feedback(db, answers[0].id, label=1)
    return images, [1, 10, 7]


def test_feedback_dataset_in_a_stable_order(db: Database) -> None:
    empty = feedback_dataset(db)
    assert empty.images.shape == (0, 28, 28) and empty.labels.shape == (0,)
    images, labels = _corrected(db)
    data = feedback_dataset(db)
    assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
    assert np.array_equal(data.images, np.stack(images))
    assert data.labels.tolist() == labels
    again = feedback_dataset(db)
    assert again.ids == data.ids and len(set(data.ids)) == 3


def test_export_npz_round_trip(db: Database, tmp_path: Path) -> None:
    images, labels = _corrected(db)
    exported = export_feedback(db, tmp_path / "out" / "feedback.npz", "npz")
    assert exported.count == 3 and exported.paths == [tmp_path / "out" / "feedback.npz"]
    with np.load(tmp_path / "out" / "feedback.npz", allow_pickle=False) as npz:
        assert np.array_equal(npz["images"], np.stack(images))
        assert npz["labels"].tolist() == labels
        assert npz["prediction_ids"].tolist() == feedback_dataset(db).ids
        assert set(npz["models"].tolist()) == {"digitnet:20261130-091026"}
        assert npz["created_at"].dtype.kind == "M" and len(npz["created_at"]) == 3
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["feedback.npz"]  # no leftovers


def test_export_idx_round_trip(db: Database, tmp_path: Path) -> None:
    images, labels = _corrected(db)
    exported = export_feedback(db, tmp_path / "feedback", "idx")
    assert exported.paths == [
        tmp_path / "feedback-images-idx3-ubyte",
        tmp_path / "feedback-labels-idx1-ubyte",
    ]
    assert np.array_equal(parse_idx(exported.paths[0].read_bytes()), np.stack(images))
    assert parse_idx(exported.paths[1].read_bytes()).tolist() == labels
    assert "3 corrections" in str(exported)


def test_export_refuses_an_unknown_format(db: Database, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        export_feedback(db, tmp_path / "out" / "feedback.csv", "csv")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
