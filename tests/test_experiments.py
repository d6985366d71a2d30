"""A/B tests: one at a time, state in the database, sticky assignment, the numbers per arm
(SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from digitrec import aliases, experiments
from digitrec.db import Database
from digitrec.errors import DigitrecError, InvalidRequest
from digitrec.experiments import Experiment
from digitrec.feedback import PredictionRecord, client_hash, record_feedback
from tests.conftest import prediction_record, store_answers

PROD, CAND = "digitnet:20261201-000000", "digitnet:20261202-000000"


def test_no_experiment_until_one_starts(db: Database) -> None:
    assert experiments.current(db) is None
    assert experiments.latest(db) is None


def test_start_records_a_running_experiment_with_a_random_salt(db: Database) -> None:
    exp = experiments.start(db, CAND, PROD, 0.1)
    assert (exp.candidate, exp.production, exp.share) == (CAND, PROD, 0.1)
    assert exp.running and exp.stopped_at is None and exp.outcome is None
    assert len(exp.salt) >= 16
    assert experiments.current(db) == exp


def test_one_experiment_at_a_time(db: Database) -> None:
    first = experiments.start(db, CAND, PROD, 0.1)
    with pytest.raises(InvalidRequest) as caught:
        experiments.start(db, "other:1", PROD, 0.5)
    assert caught.value.code == "experiment_running"
    assert experiments.current(db) == first
    experiments.stop(db, promote=False)
    second = experiments.start(db, "other:1", PROD, 0.5)
    assert second.id != first.id and second.salt != first.salt


def test_experiments_started_at_the_same_moment_give_one_running(database_url: str) -> None:
    dbs = [Database(database_url) for _ in range(4)]
    dbs[0].migrate()
    barrier, outcomes = threading.Barrier(len(dbs)), []

    def race(db: Database) -> None:
        barrier.wait()
        try:
            outcomes.append(experiments.start(db, CAND, PROD, 0.2).id)
        except DigitrecError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=race, args=(db,)) for db in dbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    started = [o for o in outcomes if isinstance(o, int)]
    assert len(started) == 1, outcomes
    assert set(outcomes) - set(started) <= {"experiment_running"}, outcomes
    current = experiments.current(dbs[0])
    assert current is not None and current.id == started[0]
    for db in dbs:
        db.dispose()


def test_the_experiment_survives_a_new_database_object(database_url: str) -> None:
    first = Database(database_url)
    first.migrate()
    started = experiments.start(first, CAND, PROD, 0.25)
    first.dispose()
    second = Database(database_url)
    second.migrate()
    reloaded = experiments.current(second)
    assert reloaded == started
    assert reloaded is not None
    ids = [f"client-{i}" for i in range(100)]
    assert [experiments.assign(reloaded, i) for i in ids] == [
        experiments.assign(started, i) for i in ids
    ]
    second.dispose()


@pytest.mark.parametrize("promote", [False, True])
def test_stop_records_the_outcome(db: Database, promote: bool) -> None:
    started = experiments.start(db, CAND, PROD, 0.1)
    stopped = experiments.stop(db, promote=promote)
    assert stopped.id == started.id
    assert stopped.outcome == ("promoted" if promote else "stopped")
    assert stopped.stopped_at is not None and stopped.stopped_at >= started.started_at
    assert experiments.current(db) is None
    assert experiments.latest(db) == stopped
    assert aliases.production(db) == (CAND if promote else None)  # same transaction


def test_stop_without_a_running_experiment_is_refused(db: Database) -> None:
    with pytest.raises(InvalidRequest) as caught:
        experiments.stop(db, promote=True)
    assert caught.value.code == "no_experiment"


@pytest.mark.parametrize(
    ("candidate", "production", "share"),
    [(CAND, PROD, 0.0), (CAND, PROD, 1.0), (CAND, PROD, -0.1), (PROD, PROD, 0.1), ("", PROD, 0.1)],
)
def test_start_refuses_what_cannot_be_compared(
    db: Database, candidate: str, production: str, share: float
) -> None:
    with pytest.raises(InvalidRequest):
        experiments.start(db, candidate, production, share)
    assert experiments.current(db) is None


# --- assignment: pure, no database ---------------------------------------------------------


def _experiment(share: float, salt: str = "5a1t") -> Experiment:
    return Experiment(1, CAND, PROD, share, salt, datetime.now(UTC), None, None)


def test_no_client_id_is_no_arm() -> None:
    assert experiments.assign(_experiment(0.5), None) is None
    assert experiments.assign(_experiment(0.5), "") is None


def test_assignment_is_sticky() -> None:
    exp = _experiment(0.3)
    first = [experiments.assign(exp, f"client-{i}") for i in range(500)]
    again = [experiments.assign(dataclasses.replace(exp), f"client-{i}") for i in range(500)]
    assert first == again
    assert set(first) == {"production", "candidate"}


@pytest.mark.parametrize("share", [0.05, 0.1, 0.5, 0.9])
def test_about_share_of_clients_go_to_the_candidate(share: float) -> None:
    exp = _experiment(share)
    arms = [experiments.assign(exp, f"client-{i}") for i in range(10_000)]
    assert abs(arms.count("candidate") / len(arms) - share) < 0.02


def test_a_new_salt_reshuffles_the_clients() -> None:
    ids = [f"client-{i}" for i in range(2000)]
    one = [experiments.assign(_experiment(0.5, "salt-one"), i) for i in ids]
    two = [experiments.assign(_experiment(0.5, "salt-two"), i) for i in ids]
    changed = sum(a != b for a, b in zip(one, two, strict=True)) / len(ids)
    assert 0.4 < changed < 0.6


def test_a_larger_share_only_adds_clients_to_the_candidate() -> None:
    ids = [f"client-{i}" for i in range(2000)]
    small = {i for i in ids if experiments.assign(_experiment(0.1), i) == "candidate"}
    large = {i for i in ids if experiments.assign(_experiment(0.3), i) == "candidate"}
    assert small < large


def test_assignment_follows_the_documented_hash() -> None:
    exp = _experiment(0.5, "0123abcd")
    for client in ("alice", "bob", "key_1a2b3c4d", "ünïcode"):
        digest = hashlib.sha256(f"0123abcd\0{client}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        if abs(point - 0.5) > 1e-9:
            expected = "candidate" if point < 0.5 else "production"
            assert experiments.assign(exp, client) == expected


# --- the numbers per arm ---------------------------------------------------------------------


def test_arm_rows_are_zero_without_traffic(db: Database) -> None:
    exp = experiments.start(db, CAND, PROD, 0.5)
    rows = experiments.arm_rows(db, exp)
    assert set(rows) == {"production", "candidate"}
    for arm in rows.values():
        assert (arm.requests, arm.clients, arm.corrections, arm.right, arm.flagged) == (0,) * 5
        assert arm.confidence_sum == 0.0 and len(arm.latencies_ms) == 0


def test_arm_rows_count_answers_and_corrections_per_arm(db: Database) -> None:
    exp = experiments.start(db, CAND, PROD, 0.5)
    on = {"experiment_id": exp.id}

    def answer(arm: str, client: str, **fields: object) -> PredictionRecord:
        return prediction_record(arm=arm, client_hash=client_hash(client), **on, **fields)

    cand = [
        answer("candidate", "c1", confidence=0.5, latency_ms=10.0),
        answer("candidate", "c1", confidence=0.7, latency_ms=30.0),
        answer("candidate", "c2", confidence=0.2, verdict="not_a_digit", latency_ms=20.0),
    ]
    prod = [answer("production", "p1", confidence=0.9, latency_ms=4.0)]
    elsewhere = [
        prediction_record(),  # no experiment
        prediction_record(experiment_id=exp.id, arm=None),  # no client id
        prediction_record(experiment_id=exp.id + 1, arm="candidate"),  # another experiment
    ]
    store_answers(db, cand + prod + elsewhere)
    record_feedback(db, cand[0].id, label=7)  # right: the answer was 7
    record_feedback(db, cand[1].id, label=1)  # wrong
    record_feedback(db, cand[2].id, label=None)  # right: not a digit
    record_feedback(db, prod[0].id, correct=True)
    record_feedback(db, elsewhere[2].id, label=7)

    rows = experiments.arm_rows(db, exp)
    c, p = rows["candidate"], rows["production"]
    assert (c.requests, c.clients, c.corrections, c.right, c.flagged) == (3, 2, 3, 2, 1)
    assert c.confidence_sum == pytest.approx(1.4)
    assert sorted(c.latencies_ms.tolist()) == [10.0, 20.0, 30.0]
    assert isinstance(c.latencies_ms, np.ndarray)
    assert (p.requests, p.clients, p.corrections, p.right, p.flagged) == (1, 1, 1, 1, 0)
    assert p.confidence_sum == pytest.approx(0.9)
    assert p.latencies_ms.tolist() == [4.0]


def test_latencies_are_the_newest_answers_of_each_arm(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = experiments.start(db, CAND, PROD, 0.5)
    now = datetime.now(UTC)
    records = [
        prediction_record(
            arm="candidate",
            experiment_id=exp.id,
            created_at=now - timedelta(seconds=10 - i),
            latency_ms=float(i),
        )
        for i in range(5)
    ]
    store_answers(db, records)
    monkeypatch.setattr(experiments, "LATENCY_SAMPLE", 2)
    rows = experiments.arm_rows(db, exp)
    assert sorted(rows["candidate"].latencies_ms.tolist()) == [3.0, 4.0]  # the newest two
    assert rows["candidate"].requests == 5  # counts are not sampled
