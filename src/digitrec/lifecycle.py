"""Which model "the model" is, for every command and the server.

A version pinned with ``--model`` (``settings.model``); else the one the ``production``
alias points at (``digitrec models promote``, kept in the database); else the model that
ships with digitrec. ``digitrec serve``, ``predict`` and ``evaluate`` all ask here, so a
promotion changes what each of them uses, and a freshly trained version is used by none
until it is promoted.

Reading the alias never creates a database: with the default SQLite file not there yet,
nothing was ever promoted.
"""

from __future__ import annotations

from pathlib import Path

from digitrec import aliases
from digitrec.config import Settings
from digitrec.db import Database
from digitrec.db.tables import AliasEventRow
from digitrec.registry import ModelEntry, Registry

SQLITE_PREFIX = "sqlite:///"


def database_exists(settings: Settings) -> bool:
    """False only for a SQLite file that was never created (so nothing was promoted)."""
    url = settings.database
    return not url.startswith(SQLITE_PREFIX) or Path(url[len(SQLITE_PREFIX) :]).is_file()


def production_entry(registry: Registry, db: Database | None) -> ModelEntry:
    """The model the production alias points at, or the shipped one when none is."""
    ref = aliases.production(db) if db is not None else None
    return registry.resolve(ref) if ref else registry.shipped()


def served_entry(settings: Settings, db: Database | None = None) -> ModelEntry:
    """The pinned model, else production (see the module docstring)."""
    registry = Registry.from_settings(settings)
    if settings.model:
        return registry.resolve(settings.model)
    if db is None and database_exists(settings):
        # Read only: no migration (it imports Alembic and takes a lock) just to read one
        # alias; a database without the alias table has never promoted anything.
        db = Database.from_settings(settings)
        try:
            promoted = db.has_table(AliasEventRow.__tablename__)
            return production_entry(registry, db if promoted else None)
        finally:
            db.dispose()
    return production_entry(registry, db)
