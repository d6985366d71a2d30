"""Model lifecycle: alias events, experiments, predictions and corrections.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REF = 200  # NAME:VERSION
WORD = 16  # arm, action, verdict, outcome


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _answer() -> list[sa.Column[object]]:
    """The columns a prediction and its correction share: what was served, and to whom."""
    return [
        sa.Column("model", sa.String(REF), nullable=False),
        sa.Column("arm", sa.String(WORD), nullable=True),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("client_hash", sa.String(16), nullable=True),
        sa.Column("digit", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("verdict", sa.String(WORD), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("model", sa.String(REF), nullable=True),
        sa.Column("previous", sa.String(REF), nullable=True),
        sa.Column("action", sa.String(WORD), nullable=False),
        _time("at"),
        _time("undone_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alias_events"),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate", sa.String(REF), nullable=False),
        sa.Column("production", sa.String(REF), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        _time("started_at"),
        _time("stopped_at", nullable=True),
        sa.Column("outcome", sa.String(WORD), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
    )
    running = sa.text("stopped_at IS NULL")
    op.create_index(
        "ux_experiments_running",
        "experiments",
        [sa.text("(stopped_at IS NULL)")],
        unique=True,
        sqlite_where=running,
        postgresql_where=running,
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(32), nullable=False),
        _time("created_at"),
        *_answer(),
        sa.Column("input", sa.LargeBinary(), nullable=True),  # erased after the window
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("upload", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_predictions"),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_index("ix_predictions_experiment_id", "predictions", ["experiment_id"])
    op.create_table(
        "corrections",
        sa.Column("prediction_id", sa.String(32), nullable=False),
        _time("created_at"),
        _time("corrected_at"),
        *_answer(),
        sa.Column("input", sa.LargeBinary(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=True),
        sa.Column("right", sa.Boolean(), nullable=False),
        sa.Column("upload", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("prediction_id", name="pk_corrections"),
    )
    op.create_index("ix_corrections_experiment_id", "corrections", ["experiment_id"])


def downgrade() -> None:
    op.drop_table("corrections")
    op.drop_table("predictions")
    op.drop_index("ux_experiments_running", table_name="experiments")
    op.drop_table("experiments")
    op.drop_table("alias_events")
