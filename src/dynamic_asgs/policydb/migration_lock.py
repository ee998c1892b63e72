"""The lock that lets one process at a time migrate the policy DB schema, on every backend.

Goals: two migrators started together (two policy servers' pre-starts, a syncer) both
succeed and never run migrations at the same time; a migrator that dies holding the lock
does not block the others for ever; a waiting migrator says who it waits for.

* **PostgreSQL**: ``pg_advisory_lock`` on the migrating session; the server releases it
  when the session ends, however it ends. The wait is bounded by ``lock_timeout`` and
  ``statement_timeout`` for that one statement, then both return to the session defaults
  (:mod:`.db` bounds every wait of a pooled connection).
* **MySQL / MariaDB**: a **lease row**, not ``GET_LOCK``: cf-deployment's MySQL is Percona
  XtraDB Cluster, which does not support ``GET_LOCK`` (issue 12). A row lock held by the
  migrating session would not do either: MySQL commits implicitly before every DDL
  statement, so the first ``CREATE TABLE`` would release it. The lease lives in its own
  table ``migration_lock`` (created with ``CREATE TABLE IF NOT EXISTS`` and its row with
  ``INSERT IGNORE`` before the first migration, outside Alembic, so the schema's revisions
  are unchanged): one row with a holder (host, pid and a random part, unique per attempt)
  and an expiry in the DB's clock (:func:`~dynamic_asgs.policydb.db.db_now`, so VM clocks do
  not matter).

  - *Taking it* is one committed conditional ``UPDATE`` (free, ours, or expired); of two
    contenders exactly one matches. On a Galera cluster two nodes may both match and one
    commit then fails certification (a deadlock error): that attempt counts as "busy".
  - *Keeping it*: while the migration runs, a heartbeat thread renews the lease every
    ``ttl / 3`` seconds on its own connection (the migrating one is busy with DDL), so a
    live holder keeps it however long a migration takes.
  - *A dead holder* stops renewing; its lease expires ``ttl`` seconds later and the next
    migrator takes it over (logged with the previous holder).
  - *Losing it*: a heartbeat that finds another holder logs it, and the migration ends in a
    :class:`~dynamic_asgs.errors.DatabaseError` (the caller retries and finds the schema
    at head or migrates what is left).
* **SQLite**: ``flock`` on ``<database file>.migrate-lock`` (the kernel releases it when
  the process dies).

Every backend first tries without waiting; if the lock is busy it logs
``migration-lock-busy`` (with the holder where the backend knows it) and then waits up to
``timeout`` seconds, after which it raises :class:`~dynamic_asgs.errors.DatabaseError`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from dynamic_asgs.errors import DatabaseError, LockTimeout
from dynamic_asgs.filelock import locked
from dynamic_asgs.lager import Logger
from dynamic_asgs.policydb.db import database_errors, db_now

__all__ = ["DEFAULT_LEASE_TTL", "LOCK_TABLE", "migration_lock"]

#: Seconds a MySQL migration lease lives without renewal (a dead holder's lease expires after this).
DEFAULT_LEASE_TTL = 30.0
_PG_LOCK_KEY = 0x64617367  # "dasg"
_LOCK_ROW = "schema"
_POLL = 0.25
_MYSQL_BUSY = (1205, 1213)  # lock wait timeout; deadlock (also a Galera certification failure)

#: The MySQL lease table (not in :data:`~dynamic_asgs.policydb.tables.metadata`: only MySQL has it).
LOCK_TABLE = sa.Table(
    "migration_lock",
    sa.MetaData(),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("expires_at", sa.Double(), nullable=False),
)


@contextmanager
def migration_lock(conn: Connection, *, timeout: float, log: Logger, ttl: float = DEFAULT_LEASE_TTL
                   ) -> Iterator[None]:
    """Hold the migration lock of ``conn``'s database while the block runs ``conn``'s migrations."""
    name = conn.dialect.name
    if name == "postgresql":
        with _advisory_lock(conn, timeout, log):
            yield
    elif name in ("mysql", "mariadb"):
        lease = _Lease(conn.engine, ttl=ttl, log=log)
        lease.acquire(timeout)
        try:
            yield
        finally:
            lease.release()
    else:
        with _file_lock(conn.engine, timeout, log):
            yield


@contextmanager
def _advisory_lock(conn: Connection, timeout: float, log: Logger) -> Iterator[None]:
    if not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({_PG_LOCK_KEY})").scalar():
        log.info("migration-lock-busy", {"backend": "postgresql", "timeout_seconds": timeout})
        ms = int(timeout * 1000)
        conn.exec_driver_sql(f"SET lock_timeout = {ms}")
        conn.exec_driver_sql(f"SET statement_timeout = {ms}")
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_KEY})")
        conn.exec_driver_sql("RESET lock_timeout")
        conn.exec_driver_sql("RESET statement_timeout")
    conn.commit()
    try:
        yield
    finally:
        conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})")
        conn.commit()


@contextmanager
def _file_lock(engine: Engine, timeout: float, log: Logger) -> Iterator[None]:
    path = engine.url.database
    if not path or path == ":memory:":
        yield
        return
    lock = f"{path}.migrate-lock"
    try:
        try:
            with locked(lock, timeout=0):
                yield
            return
        except LockTimeout:
            log.info("migration-lock-busy", {"backend": "sqlite", "lock_file": lock, "timeout_seconds": timeout})
        with locked(lock, timeout=timeout):
            yield
    except LockTimeout as exc:
        raise DatabaseError(f"policy DB: the migration lock {lock} was held by another process for "
                            f"{timeout:.0f} s") from exc


class _Lease:
    """The MySQL lease: acquire (waiting for a free or expired lease), heartbeat, release."""

    def __init__(self, engine: Engine, *, ttl: float, log: Logger) -> None:
        self.engine, self.ttl, self.log = engine, ttl, log
        self.holder = f"{uuid.uuid4().hex[:8]}:{os.getpid()}:{socket.gethostname()}"[:255]
        self._stop = threading.Event()
        self._lost: str | None = None
        self._heartbeat: threading.Thread | None = None

    def acquire(self, timeout: float) -> None:
        """Take the lease, waiting up to ``timeout`` seconds; then start the heartbeat."""
        with database_errors("creating the migration lock table"):
            _ensure_table(self.engine)
        deadline = time.monotonic() + timeout
        reported = False
        while (busy := self._try()) is not None:
            holder, remaining = busy
            if not reported:
                reported = True
                self.log.info("migration-lock-busy", {"backend": "mysql", "holder": holder,
                                                      "lease_remaining_seconds": round(remaining, 1),
                                                      "timeout_seconds": timeout})
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseError(f"policy DB: the migration lock is held by {holder or 'another migrator'} "
                                    f"(its lease has {max(remaining, 0):.0f} s left); gave up after "
                                    f"{timeout:.0f} s")
            time.sleep(min(_POLL, left))
        self._heartbeat = threading.Thread(target=self._renew_until_stopped, name="migration-lease", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        """Stop the heartbeat and free the lease; raise DatabaseError if it was lost meanwhile."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with database_errors("releasing the migration lock"), self.engine.begin() as conn:
            conn.execute(sa.update(LOCK_TABLE).where(LOCK_TABLE.c.name == _LOCK_ROW, LOCK_TABLE.c.holder == self.holder)
                         .values(holder="", expires_at=0.0))
        if self._lost is not None:
            raise DatabaseError(f"policy DB: the migration lock was taken by {self._lost} while this process "
                                "migrated; migrate again")

    def _try(self) -> tuple[str, float] | None:
        """One attempt: ``None`` when the lease is now ours, else (holder, seconds its lease has left)."""
        table = LOCK_TABLE
        try:
            with database_errors("taking the migration lock"), self.engine.begin() as conn:
                now = db_now(conn)
                row = conn.execute(sa.select(table.c.holder, table.c.expires_at).where(table.c.name == _LOCK_ROW)).one()
                free = row.holder in ("", self.holder) or float(row.expires_at) < now
                taken = free and conn.execute(
                    sa.update(table)
                    .where(table.c.name == _LOCK_ROW,
                           sa.or_(table.c.holder.in_(("", self.holder)), table.c.expires_at < now))
                    .values(holder=self.holder, expires_at=now + self.ttl)
                ).rowcount == 1
        except DatabaseError as exc:
            if _busy(exc):
                return "", 0.0
            raise
        if not taken:
            return str(row.holder), float(row.expires_at) - now
        if row.holder not in ("", self.holder):
            self.log.info("migration-lock-taken-over", {"previous_holder": row.holder, "holder": self.holder,
                                                        "expired_seconds_ago": round(now - float(row.expires_at), 1)})
        return None

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                with database_errors("renewing the migration lock"), self.engine.begin() as conn:
                    now = db_now(conn)
                    renewed = conn.execute(
                        sa.update(LOCK_TABLE)
                        .where(LOCK_TABLE.c.name == _LOCK_ROW, LOCK_TABLE.c.holder == self.holder)
                        .values(expires_at=now + self.ttl)
                    ).rowcount == 1
                    holder = "" if renewed else conn.execute(
                        sa.select(LOCK_TABLE.c.holder).where(LOCK_TABLE.c.name == _LOCK_ROW)).scalar_one()
            except DatabaseError as exc:  # keep trying: renewing later still works if nobody took over
                self.log.error("migration-lock-renewal-failed", exc, {"holder": self.holder})
                continue
            if not renewed:
                self._lost = holder or "nobody"
                self.log.error("migration-lock-lost", f"taken by {self._lost}", {"holder": self.holder})
                return


def _ensure_table(engine: Engine) -> None:
    """Create the lease table and its row if missing (idempotent; safe to race)."""
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                conn.execute(CreateTable(LOCK_TABLE, if_not_exists=True))
                conn.execute(sa.insert(LOCK_TABLE).prefix_with("IGNORE").values(name=_LOCK_ROW, holder="",
                                                                                 expires_at=0.0))
            return
        except sa.exc.OperationalError as exc:
            if not _busy(exc) or attempt == 4:
                raise
            time.sleep(_POLL)


def _busy(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is a MySQL deadlock or lock-wait error: the lease was contended."""
    seen: Any = exc
    while seen is not None:
        args = getattr(getattr(seen, "orig", seen), "args", ())
        if args and args[0] in _MYSQL_BUSY:
            return True
        seen = seen.__cause__
    return False
