"""Initial schema: security_groups, security_groups_info (dataset version, sync state), leases.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

__all__ = ["branch_labels", "depends_on", "down_revision", "downgrade", "revision", "upgrade"]

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    """Create the tables and their single rows (dataset version 0, the syncer's lease)."""
    op.create_table(
        "security_groups",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("guid", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("rules", _LONG_TEXT, nullable=False),
        sa.Column("staging_default", sa.Boolean(), nullable=False),
        sa.Column("running_default", sa.Boolean(), nullable=False),
        sa.Column("staging_spaces", _LONG_TEXT, nullable=False),
        sa.Column("running_spaces", _LONG_TEXT, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("guid", name="security_groups_guid_key"),
        sqlite_autoincrement=True,  # never reuse the id of a deleted group
    )
    info = op.create_table(
        "security_groups_info",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.Double(), nullable=False),
        sa.Column("cc_last_update", sa.String(64), nullable=True),
        sa.Column("synced_at", sa.Double(), nullable=True),
    )
    leases = op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("acquired_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
    )
    op.bulk_insert(info, [{"id": 1, "version": 0, "changed_at": time.time()}])
    op.bulk_insert(leases, [{"name": "policy-server-asg-syncer", "holder": "", "acquired_at": 0.0, "expires_at": 0.0}])


def downgrade() -> None:
    """Drop everything this revision created."""
    op.drop_table("leases")
    op.drop_table("security_groups_info")
    op.drop_table("security_groups")
