"""The schema migration lock: two migrators at once, a dead holder, a live one, and no GET_LOCK on MySQL.

Migrator A is held inside its migration (it holds the lock then) by an engine event the
test controls; migrator B started meanwhile must report the lock busy and wait, and finish
only after A, finding the schema at head. On MariaDB every migrator talks through a proxy
that cuts the connection the moment a client sends ``GET_LOCK`` (or another user-lock
function), as a server that does not have them (Percona XtraDB Cluster) would fail it.
A holder that dies mid-migration (a real process, SIGKILLed) is taken over once its lease
expires; a lease that has not expired is never taken over.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from dynamic_asgs.errors import DatabaseError
from dynamic_asgs.lager import Logger
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine, db_now
from dynamic_asgs.policydb.migrate import current_revision, head_revision, upgrade
from dynamic_asgs.policydb.migration_lock import LOCK_TABLE
from dynamic_asgs.policydb.store import PolicyStore
from dynamic_asgs.policydb.tables import metadata
from support.daemons import DB_ENGINES, database, wait_for
from support.faults import TcpProxy, record

FIRST_DDL = re.compile(r"CREATE TABLE\s+[`\"]?security_groups\b", re.IGNORECASE)
USER_LOCKS = rb"GET_LOCK|RELEASE_LOCK|IS_FREE_LOCK|IS_USED_LOCK|RELEASE_ALL_LOCKS"


class Pause:
    """Holds ``engine``'s migrator at its first CREATE TABLE (it holds the lock by then) until released."""

    def __init__(self, engine: Engine) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        event.listen(engine, "before_cursor_execute", self._hook)

    def _hook(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if FIRST_DDL.search(statement) and not self.reached.is_set():
            self.reached.set()
            self.release.wait(120)


class Migrator:
    """``upgrade(engine)`` in a thread, with its log and outcome."""

    def __init__(self, engine: Engine, *, timeout: float = 60.0, lease_ttl: float = 30.0) -> None:
        self.stream = io.StringIO()
        self.result: tuple[str | None, str] | None = None
        self.error: BaseException | None = None
        self.timeout, self.lease_ttl = timeout, lease_ttl
        self.thread = threading.Thread(target=self._run, args=(engine,), daemon=True)
        self.thread.start()

    def _run(self, engine: Engine) -> None:
        try:
            self.result = upgrade(engine, timeout=self.timeout, lease_ttl=self.lease_ttl,
                                  logger=Logger("migrator", stream=self.stream))
        except BaseException as exc:
            self.error = exc

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [line["data"] for line in lines if line["message"].endswith(f".{name}")]

    def finish(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive(), "the migrator did not finish"


@contextmanager
def engines(kind: str, tmp_path: Path, count: int) -> Iterator[tuple[DatabaseSettings, list[Engine]]]:
    """``count`` engines on a fresh database; on MariaDB through a proxy that refuses user locks."""
    with database(kind, tmp_path) as settings:
        proxy = TcpProxy((settings.host, settings.port)) if kind == "mariadb" else None
        if proxy is not None:
            proxy.cut_on(USER_LOCKS)
            settings = dataclasses.replace(settings, port=proxy.port)
        made = [create_engine(settings, pool_size=1, max_overflow=1) for _ in range(count)]
        try:
            yield settings, made
            if proxy is not None:
                assert proxy.armed and proxy.cuts == 0, "a migrator sent a MySQL user-lock function"
        finally:
            for engine in made:
                engine.dispose()
            if proxy is not None:
                proxy.cut_all()


def lease(engine: Engine) -> tuple[str, float, float]:
    """The MySQL lease row: holder, expiry and the DB's time now."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(LOCK_TABLE.c.holder, LOCK_TABLE.c.expires_at)).one()
        return str(row.holder), float(row.expires_at), db_now(conn)


@pytest.mark.parametrize("kind", DB_ENGINES)
def test_two_migrators_at_once_both_succeed_one_after_the_other(kind: str, tmp_path: Path) -> None:
    head = head_revision()
    with engines(kind, tmp_path, 3) as (_settings, (first, second, third)):
        pause = Pause(first)
        a = Migrator(first, lease_ttl=1.0)
        wait_for(pause.reached.is_set, what="A to take the lock and start migrating")
        b = Migrator(second, lease_ttl=1.0)
        wait_for(lambda: b.events("migration-lock-busy"), what="B to find the lock busy")
        if kind == "mariadb":  # A's heartbeat keeps its 1 s lease alive well past the first expiry
            holder, expires, _ = lease(third)
            wait_for(lambda: lease(third)[1] >= expires + 2, what="A's lease to be renewed")
            assert lease(third)[0] == holder and holder in {d["holder"] for d in b.events("migration-lock-busy")}
        impatient = Migrator(third, timeout=0.5)
        impatient.finish()
        assert isinstance(impatient.error, DatabaseError), "a migrator that cannot wait gets a DatabaseError"
        assert b.thread.is_alive() and b.result is None, "B must wait while A migrates"
        pause.release.set()
        a.finish()
        b.finish()
        assert (a.error, b.error) == (None, None)
        assert a.result == (None, head)
        assert b.result == (head, head), "B ran no migration: it found the schema at head"
        assert PolicyStore(second).state().version == 0
    record("migration-lock", injected=1, bad_inputs=0, violations=0, backend=kind)


def test_a_holder_killed_mid_migration_is_taken_over_after_its_lease_expires(tmp_path: Path) -> None:
    with engines("mariadb", tmp_path, 1) as (settings, (engine,)):
        dead = _die_mid_migration(settings, lease_ttl=2.0)
        holder, _, _ = lease(engine)
        assert holder and holder.split(":")[1] == str(dead)
        survivor = Migrator(engine, lease_ttl=2.0)
        survivor.finish()
        assert survivor.error is None and survivor.result == (None, head_revision())
        assert [e["previous_holder"] for e in survivor.events("migration-lock-taken-over")] == [holder]
        assert lease(engine)[0] == "", "the lock is free again"
    record("migration-lock", injected=1, bad_inputs=0, violations=0, backend="mariadb", fault="holder-killed")


def test_an_unexpired_lease_is_never_taken_over(tmp_path: Path) -> None:
    with engines("mariadb", tmp_path, 1) as (settings, (engine,)):
        _die_mid_migration(settings, lease_ttl=2.0)
        holder = lease(engine)[0]
        _set_expiry(engine, 3600)  # as if its holder were alive and renewing
        waiting = Migrator(engine, timeout=1.0)
        waiting.finish()
        assert isinstance(waiting.error, DatabaseError) and holder in str(waiting.error)
        assert current_revision(engine) is None, "nothing was migrated while the lease was held"
        _set_expiry(engine, -1)
        after = Migrator(engine)
        after.finish()
        assert after.error is None and after.result == (None, head_revision())


def test_a_migrator_whose_lease_is_taken_fails_instead_of_claiming_success(tmp_path: Path) -> None:
    with engines("mariadb", tmp_path, 2) as (_settings, (engine, other)):
        pause = Pause(engine)
        a = Migrator(engine, lease_ttl=1.0)
        wait_for(pause.reached.is_set, what="A to take the lock")
        with other.begin() as conn:
            conn.execute(sa.update(LOCK_TABLE).values(holder="intruder", expires_at=db_now(conn) + 3600))
        wait_for(lambda: a.events("migration-lock-lost"), what="A's heartbeat to notice")
        pause.release.set()
        a.finish()
        assert isinstance(a.error, DatabaseError) and "intruder" in str(a.error)
        assert lease(other)[0] == "intruder", "A does not release a lease that is not its own"


def test_the_lock_table_is_made_idempotently_outside_the_schema_revisions(tmp_path: Path) -> None:
    with engines("mariadb", tmp_path, 1) as (_settings, (engine,)):
        assert upgrade(engine) == (None, head_revision())
        with engine.begin() as conn:  # a database migrated before the lock table existed
            conn.exec_driver_sql("DROP TABLE migration_lock")
        assert upgrade(engine) == (head_revision(), head_revision())
        assert upgrade(engine) == (head_revision(), head_revision())
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(LOCK_TABLE)).scalar() == 1
        assert "migration_lock" in sa.inspect(engine).get_table_names()
        assert "migration_lock" not in metadata.tables, "the lock is not part of the schema"


def _die_mid_migration(settings: DatabaseSettings, *, lease_ttl: float) -> int:
    """A real migrator process SIGKILLed at its first CREATE TABLE, holding the lease; return its pid."""
    script = f"""
import json, os, re, signal, sys
from sqlalchemy import event
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
engine = create_engine(DatabaseSettings(**json.loads(sys.argv[1])))
@event.listens_for(engine, "before_cursor_execute")
def die(conn, cursor, statement, *rest):
    if re.search({FIRST_DDL.pattern!r}, statement, re.IGNORECASE):
        os.kill(os.getpid(), signal.SIGKILL)
upgrade(engine, lease_ttl={lease_ttl})
"""
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(dataclasses.asdict(settings))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, stderr
    return proc.pid


def _set_expiry(engine: Engine, seconds_from_now: float) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(LOCK_TABLE).values(expires_at=db_now(conn) + seconds_from_now))
