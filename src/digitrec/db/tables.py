"""The lifecycle database's tables, declared once as SQLAlchemy 2 typed mappings.

``alias_events`` (where each alias points, as an append-only log), ``experiments`` (A/B
tests), ``predictions`` (recent answers, kept so a user can correct them) and
``corrections`` (users' corrections, which outlive their prediction), ``traffic``
(requests per minute) and ``api_keys`` (API keys, as hashes). Every change here
needs an Alembic migration in ``digitrec/db/migrations/versions/``; a test checks that
the migrations build exactly these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

REF_LENGTH = 200  # a model reference NAME:VERSION (two names of at most 64 characters)
ID_LENGTH = 32  # a prediction id: uuid4 hex
HASH_LENGTH = 16  # a client hash: the first 16 hex digits of a SHA-256
WORD_LENGTH = 16  # short words: an arm, an action, a verdict, an outcome
KEY_ID_LENGTH = 64  # an API key id: key_ and 8 hex digits (longer ones came from keys.json)
KEY_NAME_LENGTH = 200  # who or what uses an API key
SHA256_LENGTH = 64  # a SHA-256 in hex

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, always aware and in UTC when read, on SQLite as on PostgreSQL.

    SQLite keeps no time zone, so values are stored as naive UTC and marked UTC on read;
    both databases then compare and order them the same way.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the database stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class AliasEventRow(Base):
    """One move of an alias: a promotion, a rollback or a promotion that ended an A/B test."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(REF_LENGTH))  # None: the shipped model
    previous: Mapped[str | None] = mapped_column(String(REF_LENGTH))
    action: Mapped[str] = mapped_column(String(WORD_LENGTH))  # promote | rollback | ab_promote
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    undone_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # a rollback undid it


class ExperimentRow(Base):
    """An A/B test; at most one has no ``stopped_at`` (a unique partial index says so)."""

    __tablename__ = "experiments"
    __table_args__ = (
        Index(
            "ux_experiments_running",
            text("(stopped_at IS NULL)"),
            unique=True,
            sqlite_where=text("stopped_at IS NULL"),
            postgresql_where=text("stopped_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate: Mapped[str] = mapped_column(String(REF_LENGTH))
    production: Mapped[str] = mapped_column(String(REF_LENGTH))
    share: Mapped[float] = mapped_column(Float)
    salt: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    outcome: Mapped[str | None] = mapped_column(String(WORD_LENGTH))  # stopped | promoted


class Answer:
    """The columns an answer and its correction share: what was served, and to whom
    (declared once; each table gets its own copy of the columns)."""

    model: Mapped[str] = mapped_column(String(REF_LENGTH))
    arm: Mapped[str | None] = mapped_column(String(WORD_LENGTH))
    experiment_id: Mapped[int | None] = mapped_column(Integer, index=True)
    client_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    digit: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(WORD_LENGTH))
    probabilities: Mapped[list[float]] = mapped_column(JSON)


class PredictionRow(Answer, Base):
    """One answer the service gave, with the 28x28 input the model saw."""

    __tablename__ = "predictions"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    # 784 bytes: 28x28 uint8, row-major; erased (NULL) once the correction window is over
    input: Mapped[bytes | None] = mapped_column(LargeBinary)
    latency_ms: Mapped[float] = mapped_column(Float)
    upload: Mapped[bytes | None] = mapped_column(LargeBinary)


class CorrectionRow(Answer, Base):
    """A user's correction of one answer: a copy of the prediction plus the label given."""

    __tablename__ = "corrections"

    prediction_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())  # the prediction's time
    corrected_at: Mapped[datetime] = mapped_column(UtcDateTime())
    input: Mapped[bytes] = mapped_column(LargeBinary)
    label: Mapped[int | None] = mapped_column(Integer)  # None: "not a digit"
    right: Mapped[bool] = mapped_column(Boolean)  # the served answer was right
    upload: Mapped[bytes | None] = mapped_column(LargeBinary)


class TrafficRow(Base):
    """Requests one server process counted in one minute (several rows per minute: one per
    process and flush; the dashboard adds them up). Kept ``TRAFFIC_RETENTION``."""

    __tablename__ = "traffic"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    minute: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)  # the minute's start
    requests: Mapped[int] = mapped_column(Integer)
    client_errors: Mapped[int] = mapped_column(Integer)  # 4xx: the input or caller refused
    server_errors: Mapped[int] = mapped_column(Integer)  # 5xx: busy, not ready, failed


class ApiKeyRow(Base):
    """An API key: its SHA-256 only, never the secret. Revoking keeps the row, so a
    revoked key is told apart from an unknown one (403, not 401)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(KEY_ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(KEY_NAME_LENGTH))
    sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
