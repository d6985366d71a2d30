"""Aliases: promote, roll back and history (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from digitrec import aliases
from digitrec.db import Database
from digitrec.errors import InvalidRequest

A, B, C = "digitnet:20261201-000000", "digitnet:20261202-000000", "widenet:20261203-000000"


def test_production_is_the_shipped_model_until_something_is_promoted(db: Database) -> None:
    assert aliases.production(db) is None
    assert aliases.history(db) == []


def test_promote_points_production_at_the_model(db: Database) -> None:
    change = aliases.promote(db, A)
    assert (change.alias, change.model, change.previous, change.action) == (
        "production",
        A,
        None,
        "promote",
    )
    assert change.at.tzinfo is not None
    assert aliases.production(db) == A
    assert aliases.promote(db, B).previous == A
    assert aliases.production(db) == B


def test_rollback_goes_back_one_promotion_at_a_time_down_to_the_shipped_model(
    db: Database,
) -> None:
    aliases.promote(db, A)
    aliases.promote(db, B)
    first = aliases.rollback(db)
    assert (first.model, first.previous, first.action) == (A, B, "rollback")
    assert aliases.production(db) == A
    second = aliases.rollback(db)
    assert (second.model, second.previous) == (None, A)
    assert aliases.production(db) is None  # the shipped model again
    with pytest.raises(InvalidRequest, match="nothing to roll back") as caught:
        aliases.rollback(db)
    assert caught.value.code == "nothing_to_roll_back"
    assert aliases.production(db) is None


def test_with_nothing_ever_promoted_there_is_nothing_to_roll_back(db: Database) -> None:
    with pytest.raises(InvalidRequest, match="nothing to roll back"):
        aliases.rollback(db)
    assert aliases.history(db) == []


def test_a_promotion_after_a_rollback_rolls_back_to_where_it_came_from(db: Database) -> None:
    aliases.promote(db, A)
    aliases.promote(db, B)
    aliases.rollback(db)  # -> A; B is undone for good
    aliases.promote(db, C)
    assert aliases.rollback(db).model == A
    assert aliases.rollback(db).model is None
    with pytest.raises(InvalidRequest):
        aliases.rollback(db)


def test_promoting_the_same_model_twice_rolls_back_twice(db: Database) -> None:
    aliases.promote(db, A)
    aliases.promote(db, A)
    assert aliases.rollback(db).model == A
    assert aliases.rollback(db).model is None


def test_an_ab_promotion_is_rolled_back_like_any_other(db: Database) -> None:
    aliases.promote(db, A)
    assert aliases.promote(db, B, action="ab_promote").action == "ab_promote"
    assert aliases.rollback(db).model == A


def test_history_lists_every_move_newest_first(db: Database) -> None:
    before = datetime.now(UTC)
    aliases.promote(db, A)
    aliases.promote(db, B, action="ab_promote")
    aliases.rollback(db)
    moves = [(c.action, c.model, c.previous) for c in aliases.history(db)]
    assert moves == [("rollback", A, B), ("ab_promote", B, A), ("promote", A, None)]
    times = [c.at for c in aliases.history(db)]
    assert times == sorted(times, reverse=True)
    assert all(t >= before for t in times)


def test_aliases_move_independently(db: Database) -> None:
    aliases.promote(db, A)
    aliases.promote(db, B, alias="staging")
    assert aliases.production(db) == A
    assert aliases.target(db, "staging") == B
    assert aliases.rollback(db, alias="staging").model is None
    assert aliases.production(db) == A
    assert [c.model for c in aliases.history(db)] == [A]


def test_the_alias_survives_a_new_database_object(database_url: str) -> None:
    first = Database(database_url)
    first.migrate()
    aliases.promote(db=first, ref=A)
    first.dispose()
    second = Database(database_url)
    second.migrate()
    assert aliases.production(second) == A
    second.dispose()


@pytest.mark.parametrize(("ref", "action"), [(A, "rollback"), (A, "delete"), ("", "promote")])
def test_only_promotions_of_a_model_are_accepted(db: Database, ref: str, action: str) -> None:
    with pytest.raises(InvalidRequest):
        aliases.promote(db, ref, action=action)
    assert aliases.history(db) == []


def test_commands_read_the_alias_without_migrating(tmp_path: Path) -> None:
    """`digitrec predict` and `evaluate` ask served_entry: it reads the alias from the
    database as it is (an empty file has never promoted anything, and stays empty)."""
    from sqlalchemy import inspect

    from digitrec.config import Settings
    from digitrec.lifecycle import served_entry
    from digitrec.registry import Registry

    settings = Settings(home=tmp_path)
    shipped = Registry.from_settings(settings).shipped()
    other = next(e for e in Registry.from_settings(settings).list() if e.ref != shipped.ref)
    db_file = tmp_path / "empty.db"
    db_file.touch()  # a database file without tables
    empty = settings.model_copy(update={"database_url": f"sqlite:///{db_file}"})
    assert served_entry(empty).ref == shipped.ref
    probe = Database(empty.database)
    with probe.engine.connect() as connection:
        assert inspect(connection).get_table_names() == []  # nothing was created
    probe.dispose()
    db = Database.from_settings(settings)
    db.migrate()
    aliases.promote(db, other.ref)
    db.dispose()
    assert served_entry(settings).ref == other.ref
