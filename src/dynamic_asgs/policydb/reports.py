"""The fleet's cell reports in the policy DB (issue 14): batched upserts, reads, forgetting, convergence claims.

Goals and mechanisms:

* **Writes do not grow with calls.** :meth:`ReportStore.write` stores any number of
  reports in one transaction with the dialect's upsert (``INSERT ... ON CONFLICT DO
  UPDATE`` on PostgreSQL and SQLite, ``INSERT ... ON DUPLICATE KEY UPDATE`` on MySQL and
  MariaDB), one row per cell. ``received_at`` is the DB's clock at the write, so every
  policy server judges silence with one clock.
* **Cheap reads.** :meth:`ReportStore.read` returns the rows without their apps (the
  fleet metrics need only counts), or with the apps of only the rows whose apps' denials
  rose (a column of its own, so no other row's apps are read), or of the rows whose apps
  text mentions an app or a space (narrowed in SQL, so little is decoded).
* **Removed VMs vanish.** :meth:`ReportStore.forget_silent` deletes the rows of cells that
  have not reported for a configured time.
* **Once per version.** :meth:`ReportStore.claim_convergence` sets a version's
  ``converged_at`` with a conditional ``UPDATE ... WHERE converged_at IS NULL``: of any
  number of policy servers claiming together exactly one gets the row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from dynamic_asgs.fleet.report import CellReport
from dynamic_asgs.policydb.db import database_errors, db_now, read_connection, write_connection
from dynamic_asgs.policydb.tables import INFO_ID, cell_reports, dataset_versions, info

__all__ = ["FleetRows", "ReportRow", "ReportStore", "VersionRow"]

_CHUNK = 500
_UPDATED = ("cell_name", "received_at", "interval_seconds", "dataset_version", "current", "lagging", "failed",
            "drifted", "lagging_since", "denials_rose_at", "apps")


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One cell's last report as stored (times in epoch seconds of the DB clock)."""

    cell_id: str
    cell_name: str
    received_at: float
    interval_seconds: float
    dataset_version: int
    current: int
    lagging: int
    failed: int
    drifted: int
    lagging_since: float | None
    denials_rose_at: float | None  # the latest of its apps'
    apps: str | None  # the compact JSON array of the report's apps; None when not read


@dataclass(frozen=True, slots=True)
class VersionRow:
    """Since when a dataset version is current, and when the fleet first enforced it."""

    version: int
    changed_at: float
    converged_at: float | None


@dataclass(frozen=True, slots=True)
class FleetRows:
    """One consistent read: the current version, the DB's clock, the reports and the versions they lag behind."""

    version: int
    changed_at: float
    now: float
    reports: list[ReportRow]
    versions: dict[int, VersionRow]


def _values(report: CellReport, now: float) -> dict[str, object]:
    c = report.containers
    return {
        "cell_id": report.cell_id, "cell_name": report.cell_name, "received_at": now,
        "interval_seconds": report.interval_seconds, "dataset_version": report.dataset_version,
        "current": c.current, "lagging": c.lagging, "failed": c.failed, "drifted": c.drifted,
        "lagging_since": report.lagging_since.timestamp() if report.lagging_since else None,
        "denials_rose_at": max((a.denials_rose_at.timestamp() for a in report.apps if a.denials_rose_at),
                               default=None),
        "apps": json.dumps(report.to_json()["apps"], separators=(",", ":")),
    }


def _upsert(dialect: str) -> sa.Insert:
    if dialect in ("mysql", "mariadb"):
        mine = mysql.insert(cell_reports)
        return mine.on_duplicate_key_update({c: mine.inserted[c] for c in _UPDATED})
    statement = postgresql.insert(cell_reports) if dialect == "postgresql" else sqlite.insert(cell_reports)
    return statement.on_conflict_do_update(index_elements=[cell_reports.c.cell_id],
                                           set_={c: statement.excluded[c] for c in _UPDATED})


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class ReportStore:
    """Reads and writes ``cell_reports`` and ``dataset_versions`` through ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, reports: Iterable[CellReport]) -> int:
        """Store the reports (the last one of a cell wins) in one transaction; return the rows written."""
        latest = {r.cell_id: r for r in reports}
        if not latest:
            return 0
        with database_errors("writing cell reports"), write_connection(self.engine) as conn:
            now = db_now(conn)
            rows = [_values(r, now) for r in latest.values()]
            statement = _upsert(conn.dialect.name)
            for start in range(0, len(rows), _CHUNK):
                conn.execute(statement, rows[start:start + _CHUNK])
        return len(rows)

    def read(self, *, apps_containing: Sequence[str] | None = None, rising_apps: bool = False) -> FleetRows:
        """Every report, with the apps of the rows that ``rising_apps`` or ``apps_containing`` ask for.

        Without either, no apps are read (the cheapest read). ``rising_apps`` reads the apps
        of the rows where some app's denials rose; ``apps_containing`` those of the rows
        whose apps text contains every string given (``()``: every row's apps).
        """
        table = cell_reports
        columns: list[sa.ColumnElement[Any]] = [c for c in table.columns if c.name != "apps"]
        with_apps = rising_apps or apps_containing is not None
        if rising_apps:
            columns.append(sa.case((table.c.denials_rose_at.is_not(None), table.c.apps), else_=sa.null())
                           .label("apps"))
        elif apps_containing is not None:
            conditions = [table.c.apps.like(_like(text), escape="\\") for text in apps_containing]
            columns.append(sa.case((sa.and_(*conditions), table.c.apps), else_=sa.null()).label("apps")
                           if conditions else table.c.apps)
        with database_errors("reading cell reports"), read_connection(self.engine, snapshot=True) as conn:
            now = db_now(conn)
            head = conn.execute(sa.select(info.c.version, info.c.changed_at).where(info.c.id == INFO_ID)).one()
            reports = [ReportRow(r.cell_id, r.cell_name, float(r.received_at), float(r.interval_seconds),
                                 int(r.dataset_version), int(r.current), int(r.lagging), int(r.failed),
                                 int(r.drifted), None if r.lagging_since is None else float(r.lagging_since),
                                 None if r.denials_rose_at is None else float(r.denials_rose_at),
                                 r.apps if with_apps else None)
                       for r in conn.execute(sa.select(*columns).order_by(table.c.cell_id))]
            wanted = {r.dataset_version + 1 for r in reports if r.dataset_version < int(head.version)}
            wanted.add(int(head.version))
            versions = self._versions(conn, sorted(wanted))
        return FleetRows(int(head.version), float(head.changed_at), now, reports, versions)

    @staticmethod
    def _versions(conn: Connection, wanted: list[int]) -> dict[int, VersionRow]:
        found: dict[int, VersionRow] = {}
        table = dataset_versions
        for start in range(0, len(wanted), _CHUNK):
            for r in conn.execute(sa.select(table).where(table.c.version.in_(wanted[start:start + _CHUNK]))):
                found[int(r.version)] = VersionRow(int(r.version), float(r.changed_at),
                                                   None if r.converged_at is None else float(r.converged_at))
        return found

    def forget_silent(self, older_than_seconds: float) -> int:
        """Delete the reports of cells silent for more than ``older_than_seconds``; return how many."""
        with database_errors("forgetting silent cells"), write_connection(self.engine) as conn:
            cutoff = db_now(conn) - older_than_seconds
            result = conn.execute(sa.delete(cell_reports).where(cell_reports.c.received_at < cutoff))
        return int(result.rowcount)

    def claim_convergence(self, version: int) -> float | None:
        """Mark ``version`` converged now unless someone did; the seconds since it became current if we won."""
        table = dataset_versions
        with database_errors("claiming a convergence"), write_connection(self.engine) as conn:
            now = db_now(conn)
            result = conn.execute(sa.update(table).where(table.c.version == version, table.c.converged_at.is_(None))
                                  .values(converged_at=now))
            if result.rowcount != 1:
                return None
            changed_at = conn.execute(sa.select(table.c.changed_at).where(table.c.version == version)).scalar_one()
        return max(0.0, now - float(changed_at))
