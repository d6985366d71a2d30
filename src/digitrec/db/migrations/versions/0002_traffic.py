"""Traffic: requests and errors per minute, for the dashboard's last hour.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "traffic",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("client_errors", sa.Integer(), nullable=False),
        sa.Column("server_errors", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_traffic"),
    )
    op.create_index("ix_traffic_minute", "traffic", ["minute"])


def downgrade() -> None:
    op.drop_index("ix_traffic_minute", table_name="traffic")
    op.drop_table("traffic")
