"""A/B tests: one experiment at a time, sticky arms per client, and the raw numbers per arm.

An experiment sends a ``share`` of clients to the ``candidate`` model and the rest to
``production``. A client's arm is a pure function of the experiment's random salt and
the client id, so it never changes while the experiment runs, in any worker or after a
restart. Its state lives in the ``experiments`` table; a unique partial index lets at
most one run at a time. ``arm_rows`` reads the raw counts that ``digitrec.abstats``
turns into intervals, tests and a verdict.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Select, case, distinct, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digitrec import aliases
from digitrec.db import Database
from digitrec.db.tables import REF_LENGTH, CorrectionRow, ExperimentRow, PredictionRow, utcnow
from digitrec.errors import InvalidRequest, ValidationFailed

PRODUCTION = "production"
CANDIDATE = "candidate"
ARMS = (PRODUCTION, CANDIDATE)
SALT_BYTES = 16  # random bytes of an experiment's salt (hex: 32 characters)
POINT_BITS = 53  # bits of the hash read as a number in [0, 1): a float holds them exactly


@dataclass(frozen=True)
class Experiment:
    id: int
    candidate: str  # NAME:VERSION served to the candidate arm
    production: str  # NAME:VERSION served to the production arm
    share: float  # share of clients on the candidate arm, in (0, 1)
    salt: str
    started_at: datetime
    stopped_at: datetime | None
    outcome: str | None  # None while running; then stopped | promoted

    @property
    def running(self) -> bool:
        return self.stopped_at is None


@dataclass(frozen=True)
class ArmData:
    """The raw numbers of one arm: counts over its answers and over their corrections."""

    requests: int = 0  # answers served on this arm
    clients: int = 0  # distinct client hashes among them
    corrections: int = 0  # corrections received for them
    right: int = 0  # corrections saying the served answer was right
    confidence_sum: float = 0.0  # sum of the answers' confidences
    flagged: int = 0  # answers whose verdict was not "digit"
    latencies_ms: np.ndarray = field(  # one per answer, float64
        default_factory=lambda: np.zeros(0), compare=False
    )


def _experiment(row: ExperimentRow) -> Experiment:
    return Experiment(
        row.id,
        row.candidate,
        row.production,
        row.share,
        row.salt,
        row.started_at,
        row.stopped_at,
        row.outcome,
    )


def _running_row(session: Session) -> ExperimentRow | None:
    running = select(ExperimentRow).where(ExperimentRow.stopped_at.is_(None))
    return session.scalars(running).first()


def current(db: Database) -> Experiment | None:
    """The running experiment, if any."""
    with db.session() as session:
        row = _running_row(session)
        return _experiment(row) if row is not None else None


def latest(db: Database) -> Experiment | None:
    """The newest experiment, running or stopped (``ab status`` after ``ab stop``)."""
    with db.session() as session:
        newest = select(ExperimentRow).order_by(ExperimentRow.id.desc()).limit(1)
        row = session.scalars(newest).first()
        return _experiment(row) if row is not None else None


def _check(candidate: str, production: str, share: float) -> None:
    for ref in (candidate, production):
        if not ref or len(ref) > REF_LENGTH:
            raise InvalidRequest(f"not a model reference: {ref!r}", code="invalid_model_ref")
    if candidate == production:
        raise InvalidRequest(
            f"the candidate {candidate} is already the production model: nothing to compare",
            code="same_model",
        )
    if not 0 < share < 1:
        raise ValidationFailed(f"the candidate's share must be between 0 and 1, not {share}")


def _already_running() -> InvalidRequest:
    return InvalidRequest(
        "an A/B test is already running: stop it first (`digitrec ab stop`)",
        code="experiment_running",
    )


def start(db: Database, candidate: str, production: str, share: float) -> Experiment:
    """Start an experiment with a new random salt; only one may run at a time."""
    _check(candidate, production, share)
    row = ExperimentRow(
        candidate=candidate,
        production=production,
        share=float(share),
        salt=secrets.token_hex(SALT_BYTES),
        started_at=utcnow(),
    )
    with db.session() as session:
        if _running_row(session) is not None:
            raise _already_running()
        session.add(row)
        try:
            session.flush()  # the unique index stops a second one started at the same moment
        except IntegrityError as exc:
            raise _already_running() from exc
        return _experiment(row)


def stop(db: Database, promote: bool) -> Experiment:
    """Stop the running experiment, recording its outcome: ``promoted`` (production then
    points at the candidate, in the same transaction) or ``stopped``."""
    with db.session() as session:
        row = _running_row(session)
        if row is None:
            raise InvalidRequest("no A/B test is running", code="no_experiment")
        row.stopped_at = utcnow()
        row.outcome = "promoted" if promote else "stopped"
        if promote:
            aliases.promote_in(session, row.candidate, action="ab_promote")
        return _experiment(row)


def assign(experiment: Experiment, client_id: str | None) -> str | None:
    """The arm of a client: None without an id; the same answer every time for the same id.

    sha256(salt + "\\0" + client_id), its first 53 bits read as a number in [0, 1):
    ``"candidate"`` below the share, ``"production"`` otherwise.
    """
    if not client_id:
        return None
    digest = hashlib.sha256(f"{experiment.salt}\0{client_id}".encode()).digest()
    point = (int.from_bytes(digest[:8], "big") >> (64 - POINT_BITS)) / 2**POINT_BITS
    return CANDIDATE if point < experiment.share else PRODUCTION


LATENCY_SAMPLE = 20_000  # newest answers per arm read for the latency percentiles


def arm_rows(db: Database, experiment: Experiment) -> dict[str, ArmData]:
    """Per arm, the raw numbers ``abstats`` needs (every arm present, zeros when empty).

    Requests, clients, confidence and flags count the answers still kept
    (``prediction_retention_days``), latencies the newest ``LATENCY_SAMPLE`` of them per
    arm; corrections are kept longer.
    """
    with db.session() as session:
        answers = {row[0]: row[1:] for row in session.execute(_answers_query(experiment.id))}
        corrected = {row[0]: row[1:] for row in session.execute(_corrections_query(experiment.id))}
        latencies = _latencies(session, experiment.id)
    result = {}
    for arm in ARMS:
        requests, clients, confidence, flagged = answers.get(arm, (0, 0, 0.0, 0))
        corrections, right = corrected.get(arm, (0, 0))
        result[arm] = ArmData(
            requests=int(requests),
            clients=int(clients),
            corrections=int(corrections),
            right=int(right or 0),
            confidence_sum=float(confidence or 0.0),
            flagged=int(flagged or 0),
            latencies_ms=np.asarray(latencies.get(arm, []), dtype=np.float64),
        )
    return result


def _answers_query(experiment_id: int) -> Select[str | None, int, int, float, Any]:
    p = PredictionRow
    return (
        select(
            p.arm,
            func.count(),
            func.count(distinct(p.client_hash)),
            func.sum(p.confidence),
            func.sum(case((p.verdict != "digit", 1), else_=0)),
        )
        .where(p.experiment_id == experiment_id, p.arm.in_(ARMS))
        .group_by(p.arm)
    )


def _corrections_query(experiment_id: int) -> Select[str | None, int, Any]:
    c = CorrectionRow
    return (
        select(c.arm, func.count(), func.sum(case((c.right.is_(True), 1), else_=0)))
        .where(c.experiment_id == experiment_id, c.arm.in_(ARMS))
        .group_by(c.arm)
    )


def _latencies(session: Session, experiment_id: int) -> dict[str, list[float]]:
    """Per arm, the latencies of its newest ``LATENCY_SAMPLE`` answers (a week of a busy
    test holds millions: percentiles from the newest are as good, and cost a bounded read)."""
    p = PredictionRow
    latencies: dict[str, list[float]] = {}
    for arm in ARMS:
        newest = (
            select(p.latency_ms)
            .where(p.experiment_id == experiment_id, p.arm == arm)
            .order_by(p.created_at.desc())
            .limit(LATENCY_SAMPLE)
        )
        latencies[arm] = [float(v) for v in session.scalars(newest)]
    return latencies
