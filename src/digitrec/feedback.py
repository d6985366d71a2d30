"""Users' corrections: the answers they can correct, the corrections and their export.

The service logs every answer (``PredictionRecord``: the 28x28 input the model saw, the
answer, its probabilities, model, arm, time, a hash of the client id) through a
``PredictionLog``: a daemon thread writes them to ``predictions`` in batches, one
transaction each, off the request path, and about hourly deletes answers and
corrections past their retention. ``record_feedback`` turns a user's correction of a
kept answer into one row of ``corrections`` (a copy of the answer plus the label; a
second correction replaces the first), which outlives the answer. ``list_feedback``,
``feedback_dataset`` and ``export_feedback`` read them back for people and training.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from digitrec.config import Settings
from digitrec.data import encode_idx
from digitrec.db import Database
from digitrec.db.tables import CorrectionRow, PredictionRow, utcnow
from digitrec.errors import DigitrecError, InvalidRequest, NotFound, ValidationFailed
from digitrec.preprocess import PreprocessSpec
from digitrec.rejection import DIGIT_CLASSES, NOT_A_DIGIT
from digitrec.storage import atomic_write, atomic_write_bytes

log = logging.getLogger(__name__)

INPUT_SHAPE = (PreprocessSpec.size, PreprocessSpec.size)  # the model input, as stored
PREDICTION_RETENTION_DAYS = float(Settings.model_fields["prediction_retention_days"].default)
FEEDBACK_RETENTION_DAYS = float(Settings.model_fields["feedback_retention_days"].default)
CORRECTION_WINDOW_S = float(Settings.model_fields["correction_window_s"].default)
PURGE_EVERY_S = 60.0  # how often a PredictionLog erases inputs and deletes expired rows
_ID_RE = re.compile(r"[0-9a-f]{32}")


class PredictionNotFound(NotFound):
    """The prediction id is unknown, or its answer is older than the retention."""

    code = "prediction_not_found"


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET  # ``record_feedback(label=...)`` left out (``label=None``: not a digit)


def new_prediction_id() -> str:
    """A new prediction id: uuid4 as 32 hex digits."""
    return uuid.uuid4().hex


def client_hash(client_id: str | None) -> str | None:
    """What is stored of a client id: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(client_id.encode()).hexdigest()[:16] if client_id else None


@dataclass(frozen=True)
class PredictionRecord:
    """One answer as the service gave it, to be logged."""

    id: str  # new_prediction_id()
    created_at: datetime  # aware
    model: str  # NAME:VERSION
    arm: str | None  # "production" | "candidate" | None (no experiment, or no client id)
    experiment_id: int | None
    client_hash: str | None  # client_hash(client id)
    digit: int
    confidence: float
    verdict: str  # a key of rejection.VERDICTS
    probabilities: Sequence[float]  # one per digit
    input: np.ndarray = field(repr=False, compare=False)  # 28x28 uint8, what the model saw
    latency_ms: float = 0.0
    upload: bytes | None = field(default=None, repr=False)  # only if the operator keeps them


def _prediction_row(record: PredictionRecord) -> dict[str, Any]:
    image = np.asarray(record.input)
    if image.shape != INPUT_SHAPE or image.dtype != np.uint8:
        raise ValueError(f"input must be {INPUT_SHAPE} uint8, not {image.shape} {image.dtype}")
    if record.created_at.tzinfo is None:
        raise ValueError("created_at must be an aware datetime")
    return {
        "id": record.id,
        "created_at": record.created_at,
        "model": record.model,
        "arm": record.arm,
        "experiment_id": record.experiment_id,
        "client_hash": record.client_hash,
        "digit": int(record.digit),
        "confidence": float(record.confidence),
        "verdict": record.verdict,
        "probabilities": [float(p) for p in record.probabilities],
        "input": image.tobytes(),
        "latency_ms": float(record.latency_ms),
        "upload": record.upload,
    }


def purge_expired(
    db: Database,
    prediction_retention_days: float = PREDICTION_RETENTION_DAYS,
    feedback_retention_days: float = FEEDBACK_RETENTION_DAYS,
) -> tuple[int, int]:
    """Delete answers and corrections past their retention; return how many of each."""
    now = utcnow()
    old_answers = PredictionRow.created_at < now - timedelta(days=prediction_retention_days)
    old_corrections = CorrectionRow.corrected_at < now - timedelta(days=feedback_retention_days)
    with db.session() as session:
        answers = session.execute(delete(PredictionRow).where(old_answers))
        corrections = session.execute(delete(CorrectionRow).where(old_corrections))
        return int(getattr(answers, "rowcount", 0)), int(getattr(corrections, "rowcount", 0))


def erase_inputs(db: Database, window_s: float = CORRECTION_WINDOW_S) -> int:
    """Erase the 28x28 input (and any upload) of answers older than the correction
    window: what is drawn is not kept unless it is sent as a correction."""
    old = PredictionRow.created_at < utcnow() - timedelta(seconds=window_s)
    with db.session() as session:
        result = session.execute(
            update(PredictionRow)
            .where(old, PredictionRow.input.is_not(None))
            .values(input=None, upload=None)
        )
        return int(getattr(result, "rowcount", 0))


class PredictionLog:
    """Writes answers to the database in batches from a daemon thread.

    ``add`` never blocks on the database and never raises: when ``queue_max`` answers
    are waiting, a new one is dropped and counted in ``dropped``. An answer waits at most
    ``flush_s`` before its batch (at most ``batch_size``, one transaction) is written.
    Answers lost to a database error are counted in ``failed``, written ones in ``written``.
    """

    def __init__(
        self,
        db: Database,
        batch_size: int = 500,
        flush_s: float = 0.5,
        queue_max: int = 20_000,
        *,
        prediction_retention_days: float = PREDICTION_RETENTION_DAYS,
        feedback_retention_days: float = FEEDBACK_RETENTION_DAYS,
        correction_window_s: float = CORRECTION_WINDOW_S,
        purge_every_s: float = PURGE_EVERY_S,
    ) -> None:
        self.db = db
        self.batch_size, self.flush_s, self.queue_max = batch_size, flush_s, queue_max
        self.retention = (prediction_retention_days, feedback_retention_days)
        self.window_s = correction_window_s
        self.purge_every_s = purge_every_s
        self.dropped = self.failed = self.written = 0
        self._pending: deque[tuple[float, PredictionRecord]] = deque()  # (arrival, record)
        self._cond = threading.Condition()
        self._added = self._done = self._flush_to = 0  # counts of records; see flush()
        self._unwritten: set[str] = set()  # ids queued or being written; see wait_written()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._next_purge = float("inf")

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> PredictionLog:
        return cls(
            db,
            settings.log_batch_size,
            settings.log_flush_s,
            settings.log_queue_max,
            prediction_retention_days=settings.prediction_retention_days,
            feedback_retention_days=settings.feedback_retention_days,
            correction_window_s=settings.correction_window_s,
        )

    def start(self) -> None:
        """Start the writer thread (it deletes expired rows first, then about hourly)."""
        if self._thread is None:
            self._next_purge = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    def add(self, record: PredictionRecord) -> None:
        """Queue one answer to be written; drop it if the queue is full or the log stopped."""
        dropped = 0
        with self._cond:
            if self._stopping or len(self._pending) >= self.queue_max:
                self.dropped += 1
                dropped = self.dropped
            else:
                self._pending.append((time.monotonic(), record))
                self._unwritten.add(record.id)
                self._added += 1
                if len(self._pending) in (1, self.batch_size):  # a new deadline, or full
                    self._cond.notify_all()
        if dropped & (dropped - 1) == 0 < dropped:  # the 1st, 2nd, 4th, 8th... drop
            log.warning("prediction log: %d answers dropped (queue full, or stopped)", dropped)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every answer added so far is written (or failed); False on timeout."""
        with self._cond:
            target = self._added
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def queued(self, prediction_id: str) -> bool:
        """Is this answer waiting here to be written (queued, or in the batch being written)?"""
        with self._cond:
            return prediction_id in self._unwritten

    def wait_written(self, prediction_id: str, timeout: float | None = 10.0) -> bool:
        """Wait until this answer, if queued here, is written (or failed); False on timeout.
        An id never queued here returns at once, whatever the database is doing."""
        with self._cond:
            self._flush_to = max(self._flush_to, self._added)  # write it now, not in flush_s
            self._cond.notify_all()
            return self._cond.wait_for(lambda: prediction_id not in self._unwritten, timeout)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Write what is queued, then end the thread; later answers are dropped."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is None:
            self._run()  # never started: write what was queued here
        else:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch, last = self._next_batch()
            if batch:
                self._write(batch)
            if time.monotonic() >= self._next_purge:
                self._purge()
            if last:
                return

    def _due(self) -> bool:
        if not self._pending:
            return self._stopping
        return (
            self._stopping
            or len(self._pending) >= self.batch_size
            or self._flush_to > self._done
            or time.monotonic() - self._pending[0][0] >= self.flush_s
        )

    def _wait_s(self) -> float:
        wake = self._pending[0][0] + self.flush_s if self._pending else self._next_purge
        return min(max(wake - time.monotonic(), 0.0), 60.0)

    def _next_batch(self) -> tuple[list[PredictionRecord], bool]:
        """The next batch to write once one is due, and whether it is the last one."""
        with self._cond:
            while not self._due():
                wait = self._wait_s()
                if wait <= 0 and not self._pending:
                    return [], False  # time to purge
                self._cond.wait(wait)
            take = min(len(self._pending), self.batch_size)
            batch = [self._pending.popleft()[1] for _ in range(take)]
            return batch, self._stopping and not self._pending

    def _write(self, batch: list[PredictionRecord]) -> None:
        rows = [row for row in map(_row_or_none, batch) if row is not None]
        try:
            if rows:
                with self.db.session() as session:
                    session.execute(insert(PredictionRow), rows)
            written = len(rows)
        except DigitrecError as exc:
            log.warning("prediction log: %d answers not written: %s", len(rows), exc.message)
            written = 0
        with self._cond:
            self.written += written
            self.failed += len(batch) - written
            self._done += len(batch)
            self._unwritten.difference_update(record.id for record in batch)
            self._cond.notify_all()

    def _purge(self) -> None:
        self._next_purge = time.monotonic() + self.purge_every_s
        try:
            erased = erase_inputs(self.db, self.window_s)
            answers, corrections = purge_expired(self.db, *self.retention)
        except DigitrecError as exc:
            log.warning("prediction log: could not delete expired rows: %s", exc.message)
            return
        if erased or answers or corrections:
            log.info(
                "erased %d inputs past the correction window; deleted %d expired answers "
                "and %d corrections",
                erased,
                answers,
                corrections,
            )


def _row_or_none(record: PredictionRecord) -> dict[str, Any] | None:
    try:
        return _prediction_row(record)
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("prediction log: answer %s skipped: %s", getattr(record, "id", "?"), exc)
        return None


# --- corrections ---------------------------------------------------------------------


@dataclass(frozen=True)
class Correction:
    """A user's correction: the answer served (copied from the prediction) and the label."""

    prediction_id: str
    label: int | None  # the right digit; None: not a digit
    right: bool  # the served answer was right
    created_at: datetime  # when the answer was served
    corrected_at: datetime
    model: str
    arm: str | None
    experiment_id: int | None
    client_hash: str | None
    digit: int
    confidence: float
    verdict: str
    probabilities: tuple[float, ...]
    input: np.ndarray = field(repr=False, compare=False)  # 28x28 uint8
    upload: bytes | None = field(default=None, repr=False)

    def stored_items(self) -> list[str]:
        """What this correction keeps, in words for people (the API returns it)."""
        kept = ["label", "input_28x28", "answer", "probabilities", "model", "arm", "time"]
        kept += ["client_hash"] if self.client_hash else []
        return kept + (["upload"] if self.upload is not None else [])


def _correction(values: dict[str, Any]) -> Correction:
    """A Correction from a ``corrections`` row's values."""
    image = np.frombuffer(values["input"], dtype=np.uint8).reshape(INPUT_SHAPE).copy()
    fields = {name: values[name] for name in Correction.__dataclass_fields__}
    return Correction(**{**fields, "probabilities": tuple(values["probabilities"]), "input": image})


def _values(row: CorrectionRow) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in CorrectionRow.__table__.columns}


def _label(label: int | _Unset | None, correct: bool | None) -> int | _Unset | None:
    """The label given, or UNSET for "the served answer is right"; else InvalidRequest."""
    if correct is True and label in (None, UNSET):
        return UNSET
    if correct is not None or label is UNSET:
        raise InvalidRequest(
            'send exactly one of "label" (a digit 0-9, or null for not a digit) or "correct": true',
            code="invalid_feedback",
        )
    if label is not None and (
        isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < DIGIT_CLASSES
    ):
        raise ValidationFailed(f"label must be a digit 0-9 or null, not {label!r}")
    return label


def _right(verdict: str, digit: int, label: int | None) -> bool:
    return verdict != "digit" if label is None else verdict == "digit" and digit == label


def _live_prediction(session: Session, prediction_id: str, window_s: float) -> PredictionRow:
    known = isinstance(prediction_id, str) and _ID_RE.fullmatch(prediction_id)
    row = session.get(PredictionRow, prediction_id) if known else None
    too_old = row is not None and row.created_at < utcnow() - timedelta(seconds=window_s)
    if row is None or row.input is None or too_old:
        raise PredictionNotFound(
            f"no prediction {prediction_id!r} to correct: the id is unknown, or the answer "
            f"is older than {_duration(window_s)} and its image was erased"
        )
    return row


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} hours"
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"


def _correction_values(row: PredictionRow, label: int | _Unset | None) -> dict[str, Any]:
    if label is UNSET:  # "correct": the served answer is the label
        label = row.digit if row.verdict == "digit" else None
    shared = ("model", "arm", "experiment_id", "client_hash", "digit", "confidence", "verdict")
    return {
        "prediction_id": row.id,
        "created_at": row.created_at,
        "corrected_at": utcnow(),
        **{name: getattr(row, name) for name in shared},
        "probabilities": list(row.probabilities),
        "input": row.input,
        "label": label,
        "right": _right(row.verdict, row.digit, label),
        "upload": row.upload,
    }


def _upsert(session: Session, values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(CorrectionRow)
    statement = statement.values(**values)
    replace = {name: statement.excluded[name] for name in values if name != "prediction_id"}
    session.execute(statement.on_conflict_do_update(index_elements=["prediction_id"], set_=replace))


def record_feedback(
    db: Database,
    prediction_id: str,
    label: int | _Unset | None = UNSET,
    correct: bool | None = None,
    *,
    window_s: float = CORRECTION_WINDOW_S,
) -> Correction:
    """Store a correction of a kept answer: ``label`` (0-9, None: not a digit) or
    ``correct=True``; a second correction of the same answer replaces the first.

    ``window_s`` is ``Settings.correction_window_s``: older answers' images are erased.
    """
    wanted = _label(label, correct)
    with db.session() as session:
        prediction = _live_prediction(session, prediction_id, window_s)
        values = _correction_values(prediction, wanted)
        _upsert(session, values)
    return _correction(values)


OFFLINE_ARM = "offline"  # the arm of an answer the page's offline engine gave


@dataclass(frozen=True)
class OfflineAnswer:
    """An answer the page's offline engine gave while the server could not be reached,
    as the page sends it back with its correction once the network returns."""

    id: str  # made by the page: uuid4 as 32 hex digits
    answered_at: datetime
    model: str  # NAME:VERSION of the model the page downloaded
    digit: int
    confidence: float
    verdict: str
    probabilities: Sequence[float]
    input: bytes  # the 28x28 uint8 image the model saw, row-major


OfflineItem = tuple[OfflineAnswer, "int | _Unset | None", "bool | None"]  # answer, label, correct


def record_offline_feedback(
    db: Database, items: Sequence[OfflineItem], *, client_id: str | None = None
) -> list[Correction]:
    """Store corrections of answers given offline (arm ``offline``, outside any A/B
    test), all in one transaction or none. The caller has checked each answer against
    its model (``Service``). Sending one again replaces it; an id the server gave to one
    of its own answers is refused."""
    rows = [
        _offline_values(answer, _label(label, correct), client_id)
        for answer, label, correct in items
    ]
    with db.session() as session:
        for values in rows:
            served = session.get(PredictionRow, values["prediction_id"]) is not None
            existing = session.get(CorrectionRow, values["prediction_id"])
            if served or (existing is not None and existing.arm != OFFLINE_ARM):
                raise InvalidRequest(
                    f"prediction {values['prediction_id']!r} was answered by the server: "
                    "correct it with POST /api/v1/feedback",
                    code="not_an_offline_answer",
                )
            _upsert(session, values)
    return [_correction(values) for values in rows]


def _offline_values(
    answer: OfflineAnswer, label: int | _Unset | None, client_id: str | None
) -> dict[str, Any]:
    if len(answer.input) != INPUT_SHAPE[0] * INPUT_SHAPE[1]:
        raise ValidationFailed(f"input must be {INPUT_SHAPE[0]}x{INPUT_SHAPE[1]} bytes")
    if label is UNSET:  # "correct": the answer given is the label
        label = answer.digit if answer.verdict == "digit" else None
    return {
        "prediction_id": answer.id,
        "created_at": answer.answered_at,
        "corrected_at": utcnow(),
        "model": answer.model,
        "arm": OFFLINE_ARM,
        "experiment_id": None,
        "client_hash": client_hash(client_id),
        "digit": answer.digit,
        "confidence": answer.confidence,
        "verdict": answer.verdict,
        "probabilities": [float(p) for p in answer.probabilities],
        "input": bytes(answer.input),
        "label": label,
        "right": _right(answer.verdict, answer.digit, label),
        "upload": None,
    }


def list_feedback(
    db: Database, limit: int | None = 100, since: datetime | None = None
) -> list[Correction]:
    """Corrections, newest first; at most ``limit``, only those made at or after ``since``."""
    query = select(CorrectionRow).order_by(
        CorrectionRow.corrected_at.desc(), CorrectionRow.prediction_id
    )
    if since is not None:
        query = query.where(CorrectionRow.corrected_at >= since)
    with db.session() as session:
        return [_correction(_values(row)) for row in session.scalars(query.limit(limit))]


@dataclass(frozen=True)
class FeedbackData:
    """Corrections as training data, oldest answer first (ties by id): a stable order."""

    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64; NOT_A_DIGIT (10) for "not a digit"
    ids: list[str]  # prediction ids
    models: list[str] = field(default_factory=list)  # the model that answered
    created_at: list[datetime] = field(default_factory=list)  # when it answered


def feedback_dataset(db: Database) -> FeedbackData:
    """Every kept correction as images and labels."""
    query = select(
        CorrectionRow.prediction_id,
        CorrectionRow.input,
        CorrectionRow.label,
        CorrectionRow.model,
        CorrectionRow.created_at,
    ).order_by(CorrectionRow.created_at, CorrectionRow.prediction_id)
    with db.session() as session:
        rows = session.execute(query).all()
    images = np.frombuffer(b"".join(row.input for row in rows), dtype=np.uint8)
    labels = [NOT_A_DIGIT if row.label is None else row.label for row in rows]
    return FeedbackData(
        images=images.reshape(len(rows), *INPUT_SHAPE).copy(),
        labels=np.asarray(labels, dtype=np.int64),
        ids=[row.prediction_id for row in rows],
        models=[row.model for row in rows],
        created_at=[row.created_at for row in rows],
    )


def _write_npz(path: Path, data: FeedbackData) -> None:
    times = [t.replace(tzinfo=None) for t in data.created_at]  # all UTC
    with path.open("wb") as fh:
        np.savez_compressed(
            fh,
            images=data.images,
            labels=data.labels,
            prediction_ids=np.asarray(data.ids, dtype=str),
            models=np.asarray(data.models, dtype=str),
            created_at=np.asarray(times, dtype="datetime64[us]"),
        )


@dataclass(frozen=True)
class Exported:
    """What ``export_feedback`` wrote."""

    paths: list[Path]
    count: int  # corrections

    def __str__(self) -> str:
        return f"{self.count} corrections to {', '.join(str(p) for p in self.paths)}"


def export_feedback(db: Database, path: Path, fmt: Literal["npz", "idx"] = "npz") -> Exported:
    """Write every correction to ``path`` (npz) or to two MNIST-style IDX files named
    ``<stem>-images-idx3-ubyte`` and ``<stem>-labels-idx1-ubyte`` beside it (labels: 10 =
    not a digit). Each file appears whole or not at all.
    """
    if fmt not in ("npz", "idx"):
        raise InvalidRequest(f"unknown export format {fmt!r}: use npz or idx")
    data = feedback_dataset(db)
    path = Path(path)
    if fmt == "npz":
        return Exported([atomic_write(path, lambda tmp: _write_npz(tmp, data))], len(data.ids))
    images = path.with_name(f"{path.stem}-images-idx3-ubyte")
    labels = path.with_name(f"{path.stem}-labels-idx1-ubyte")
    atomic_write_bytes(images, encode_idx(data.images))
    atomic_write_bytes(labels, encode_idx(data.labels.astype(np.uint8)))
    return Exported([images, labels], len(data.ids))
