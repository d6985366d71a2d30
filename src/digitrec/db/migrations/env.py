"""Alembic environment: runs the migrations on the connection ``Database.migrate`` passes.

Online only, on a connection already in a transaction (and holding the migration lock),
so all migrations of one upgrade commit together. Logging is left to the application.
"""

from __future__ import annotations

from alembic import context

from digitrec.db.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with digitrec.db.Database(url).migrate()")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite: ALTER TABLE through a copy of the table
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
