"""The lifecycle database (digitrec.db): migrations, sessions and errors, on SQLite and on a
real PostgreSQL 15 (the ``database_url`` fixture runs each test on both)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from digitrec.config import Settings
from digitrec.db import Database
from digitrec.db.tables import AliasEventRow, Base
from digitrec.errors import DigitrecError, InvalidRequest, StorageError
from tests.conftest import prediction_record, store_answers

TABLES = {"alias_events", "experiments", "predictions", "corrections", "traffic", "api_keys"}


def test_migrate_creates_the_tables_and_twice_is_harmless(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    db.migrate()
    db.dispose()
    again = Database(database_url)
    again.migrate()
    with again.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) >= TABLES
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("0003",)
        ]
    again.dispose()


def test_an_older_database_is_upgraded_in_place(database_url: str) -> None:
    """A database made by an older release (0001) gains the traffic and API key tables
    and keeps its rows."""
    from alembic import command
    from alembic.config import Config

    from digitrec.db import MIGRATIONS

    db = Database(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    store_answers(db, [prediction_record()])
    with db.engine.connect() as connection:
        assert not {"traffic", "api_keys"} & set(inspect(connection).get_table_names())
    db.migrate()
    with db.engine.connect() as connection:
        assert {"traffic", "api_keys"} <= set(inspect(connection).get_table_names())
        assert connection.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
    db.dispose()


@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrations_build_exactly_the_declared_tables(db: Database) -> None:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_two_processes_migrating_at_once_both_succeed(database_url: str) -> None:
    script = "import sys; from digitrec.db import Database; Database(sys.argv[1]).migrate()"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, database_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], errors
    db = Database(database_url)
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    db.dispose()


def test_a_session_commits_on_success_and_rolls_back_on_error(db: Database) -> None:
    now = datetime.now(UTC)
    with db.session() as session:
        session.add(AliasEventRow(alias="a", model="m:1", action="promote", at=now))
    with pytest.raises(ValueError), db.session() as session:
        session.add(AliasEventRow(alias="b", model="m:2", action="promote", at=now))
        session.flush()
        raise ValueError("something went wrong after the write")
    with db.session() as session:
        assert session.scalars(select(AliasEventRow.alias)).all() == ["a"]


def test_times_come_back_aware_and_in_utc(db: Database) -> None:
    paris = datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    with db.session() as session:
        session.add(AliasEventRow(alias="a", model="m:1", action="promote", at=paris))
    with db.session() as session:
        at = session.scalars(select(AliasEventRow.at)).one()
    assert at == paris
    assert at.tzinfo == UTC
    assert at.hour == 9


def test_sqlite_is_in_wal_mode_with_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'deep' / 'folder' / 'lifecycle.db'}")
    db.migrate()  # the folder is created
    with db.engine.connect() as connection:
        pragma = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        }
    db.dispose()
    assert pragma["journal_mode"] == "wal"
    assert pragma["busy_timeout"] >= 1000
    assert pragma["foreign_keys"] == 1


def test_the_default_database_is_a_sqlite_file_in_home(settings: Settings) -> None:
    db = Database.from_settings(settings)
    db.migrate()
    db.dispose()
    assert (settings.home / "digitrec.db").is_file()


def _assert_one_line(error: DigitrecError) -> None:
    assert error.message.strip() and "\n" not in error.message
    assert "Traceback" not in error.message


def test_an_unwritable_sqlite_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StorageError) as caught:
        Database(f"sqlite:///{tmp_path / 'a-file' / 'lifecycle.db'}").migrate()
    _assert_one_line(caught.value)
    assert "a-file" in caught.value.message


def test_a_corrupt_sqlite_file_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "lifecycle.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError) as caught:
        Database(f"sqlite:///{path}").migrate()
    _assert_one_line(caught.value)
    assert str(path) in caught.value.message


def test_an_unreachable_postgres_is_a_storage_error_without_the_password() -> None:
    from tests.conftest import free_port

    url = f"postgresql+psycopg://digitrec:s3cret@127.0.0.1:{free_port()}/digitrec"
    db = Database(url)
    with pytest.raises(StorageError) as caught:
        db.migrate()
    _assert_one_line(caught.value)
    assert "127.0.0.1" in caught.value.message
    assert "s3cret" not in caught.value.message


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://host/db"])
def test_a_bad_url_is_an_invalid_request(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Database(url)
    _assert_one_line(caught.value)
