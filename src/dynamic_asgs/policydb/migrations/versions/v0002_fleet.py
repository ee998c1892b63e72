"""The fleet audit (issue 14): dataset_versions (since when each version is current) and cell_reports.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    """Create both tables; the current dataset version gets its row (current since its last change)."""
    op.create_table(
        "dataset_versions",
        sa.Column("version", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("changed_at", sa.Double(), nullable=False),
        sa.Column("converged_at", sa.Double(), nullable=True),
    )
    op.create_table(
        "cell_reports",
        sa.Column("cell_id", sa.String(128), primary_key=True),
        sa.Column("cell_name", sa.String(255), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.Column("interval_seconds", sa.Double(), nullable=False),
        sa.Column("dataset_version", sa.BigInteger(), nullable=False),
        sa.Column("current", sa.BigInteger(), nullable=False),
        sa.Column("lagging", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("drifted", sa.BigInteger(), nullable=False),
        sa.Column("lagging_since", sa.Double(), nullable=True),
        sa.Column("denials_rose_at", sa.Double(), nullable=True),
        sa.Column("apps", _LONG_TEXT, nullable=False),
    )
    op.execute("INSERT INTO dataset_versions (version, changed_at) "
               "SELECT version, changed_at FROM security_groups_info WHERE id = 1")


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("cell_reports")
    op.drop_table("dataset_versions")
