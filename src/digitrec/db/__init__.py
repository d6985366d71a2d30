"""The lifecycle database: its engine, its sessions and its schema migrations.

One ``Database`` per process (per server worker) wraps one SQLAlchemy engine on
``Settings.database``: a SQLite file by default (WAL mode, a busy timeout, foreign keys
on) or PostgreSQL (``postgresql+psycopg://...``). ``migrate()`` brings the schema to the
newest Alembic migration shipped in ``digitrec/db/migrations``, one process at a time.
Every database failure leaves this module as a ``StorageError`` with a one-line message
for people; a bad URL is an ``InvalidRequest``, a missing driver a ``DependencyMissing``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from digitrec.errors import DependencyMissing, InvalidRequest, StorageError
from digitrec.storage import storage_errors

if TYPE_CHECKING:
    from digitrec.config import Settings

MIGRATIONS = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_S = 10.0  # SQLite: how long a writer waits for another writer's lock
MIGRATION_LOCK = 0x6469676974726563  # PostgreSQL advisory lock held while migrating
CONNECT_TIMEOUT_S = 3  # PostgreSQL: a dead host fails a connection (and a check) this soon
logging.getLogger("alembic").setLevel(logging.WARNING)  # not a dozen lines at every start


class Database:
    """The engine on one URL; ``session()`` is a transaction, committed on success."""

    def __init__(self, url: str) -> None:
        parsed = _parse(url)
        self.where = _describe(parsed)  # for messages: the file, or the URL without password
        self.engine = _engine(parsed, self.where)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.database)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Upgrade the schema to the newest migration; harmless when already there."""
        from alembic import command  # alembic is imported after its log level is set (above)
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        with self.errors(), self.engine.connect() as connection, connection.begin():
            _lock_schema(connection)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def ping(self) -> None:
        """A trivial query: ``StorageError`` when the database does not answer."""
        with self.errors(), self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def has_table(self, name: str) -> bool:
        """Does the schema have this table (read only: no migration)?"""
        from sqlalchemy import inspect

        with self.errors(), self.engine.connect() as connection:
            return bool(inspect(connection).has_table(name))

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self.errors(), self._sessions.begin() as session:
            yield session

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn database and migration failures into one clear ``StorageError``."""
        from alembic.util import CommandError

        try:
            yield
        except SQLAlchemyError as exc:
            reason = getattr(exc, "orig", None) or exc
            raise StorageError(f"database {self.where}: {_one_line(reason)}") from exc
        except CommandError as exc:
            raise StorageError(
                f"database {self.where}: {_one_line(exc)} (was it migrated by a newer digitrec?)"
            ) from exc

    def dispose(self) -> None:
        """Close every pooled connection (call it at shutdown, or after a fork)."""
        self.engine.dispose()


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split()) or type(reason).__name__


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise InvalidRequest(
            f"not a database URL: {url!r} (e.g. sqlite:///path/digitrec.db or "
            "postgresql+psycopg://user@host/db)",
            code="invalid_database_url",
        ) from exc


def _describe(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _engine(url: URL, where: str) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    try:
        connect = {} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT_S}
        return create_engine(url, pool_pre_ping=True, connect_args=connect)
    except ImportError as exc:
        raise DependencyMissing(
            f"the driver for {where} is not installed: pip install 'digitrec[postgres]' "
            f"({_one_line(exc)})"
        ) from exc
    except ArgumentError as exc:
        raise InvalidRequest(
            f"unsupported database URL {where}: {_one_line(exc)}", code="invalid_database_url"
        ) from exc


def _sqlite_engine(url: URL) -> Engine:
    path = url.database
    if path and path != ":memory:" and not path.startswith("file:"):
        with storage_errors(f"the database folder {Path(path).parent}"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # The wait first: what follows may meet another process's lock.
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        # Readers never wait for the writer in WAL mode. Switching needs the file to
        # itself, so it is asked for only once (the mode stays with the file): a worker
        # connecting while another checkpoints at shutdown is not told "locked".
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; far fewer fsyncs
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _lock_schema(connection: Connection) -> None:
    """Make processes that migrate at the same time take turns (inside the transaction)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
