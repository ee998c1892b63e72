"""The policy DB's tables (SQLAlchemy Core), as the migrations create them.

* ``security_groups`` (DESIGN.md §3.3): ``id`` (stable: a group keeps its row, updated in
  place), ``guid`` (unique), ``name``, ``rules`` (CC's rules as a JSON array, text),
  ``staging_default``, ``running_default``, ``staging_spaces``, ``running_spaces`` (JSON
  arrays of space guids, sorted) and ``content_hash`` (sha256 of everything the API
  returns for the row; the syncer writes a row only when it changes).
* ``security_groups_info``: one row (id 1) holding the dataset ``version`` (bumped in the
  same transaction as any change), when it changed, and the sync state: CC's
  ``last_update`` of the stored data and when it was last confirmed.
* ``leases``: named leases with a holder and an expiry in the DB's clock
  (epoch seconds), for the one-active-syncer rule.
* ``dataset_versions``: one row per dataset version, written with the version bump:
  since when it is current (``changed_at``) and when the whole fleet first enforced it
  (``converged_at``, claimed once by one policy server; see :mod:`.reports`).
* ``cell_reports``: each cell's last report (issue 14), one row per cell (BOSH instance id):
  when it arrived (DB clock), the agent's interval, the version and container counts it
  reported, the latest ``denials_rose_at`` of its apps (so the views that need only the
  apps whose denials rose read no other cell's apps), and its apps as compact JSON.

The migrations in ``migrations/versions`` are the source of truth for the schema; this
module mirrors them for queries (a test checks that both agree).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = ["INFO_ID", "LongText", "cell_reports", "dataset_versions", "info", "leases", "metadata", "security_groups"]

#: JSON documents can exceed MySQL's 64 KiB TEXT (a rule may list 6000 destinations).
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
#: The id of the single row of ``security_groups_info``.
INFO_ID = 1

metadata = sa.MetaData()

security_groups = sa.Table(
    "security_groups",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("guid", sa.String(255), nullable=False, unique=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("rules", LongText, nullable=False),
    sa.Column("staging_default", sa.Boolean(), nullable=False),
    sa.Column("running_default", sa.Boolean(), nullable=False),
    sa.Column("staging_spaces", LongText, nullable=False),
    sa.Column("running_spaces", LongText, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sqlite_autoincrement=True,  # never reuse the id of a deleted group
)

info = sa.Table(
    "security_groups_info",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("changed_at", sa.Double(), nullable=False),
    sa.Column("cc_last_update", sa.String(64), nullable=True),
    sa.Column("synced_at", sa.Double(), nullable=True),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("acquired_at", sa.Double(), nullable=False),
    sa.Column("expires_at", sa.Double(), nullable=False),
)

dataset_versions = sa.Table(
    "dataset_versions",
    metadata,
    sa.Column("version", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("changed_at", sa.Double(), nullable=False),
    sa.Column("converged_at", sa.Double(), nullable=True),
)

cell_reports = sa.Table(
    "cell_reports",
    metadata,
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
    sa.Column("apps", LongText, nullable=False),
)
