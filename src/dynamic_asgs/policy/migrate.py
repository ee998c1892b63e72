"""Schema migrations of the policy DB (Alembic), safe to run from several processes at once.

The policy server runs :func:`upgrade` before it starts serving (``dynamic-asgs
policy-server --migrate-only`` runs just this step, e.g. from a BOSH pre-start); the
syncer runs it too, so either may start first. Concurrent runs are serialised by a lock
held for the duration: ``pg_advisory_lock`` on PostgreSQL, ``GET_LOCK`` on MySQL/MariaDB,
an ``flock`` beside the database file on SQLite. Revisions live in
``migrations/versions``; they are applied through Alembic's ``EnvironmentContext``
directly, so no ``alembic.ini`` or ``env.py`` is involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from dynamic_asgs.errors import DatabaseError
from dynamic_asgs.filelock import locked
from dynamic_asgs.policy.db import database_errors

__all__ = ["current_revision", "head_revision", "upgrade"]

_LOCK_NAME = "dynamic_asgs.migrate"
_PG_LOCK_KEY = 0x64617367  # "dasg"


def _script() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return ScriptDirectory.from_config(config)


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = _script().get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` when it was never migrated)."""
    with database_errors("reading the schema revision"), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migration_lock(conn: Connection, engine: Engine, timeout: float) -> Iterator[None]:
    name = conn.dialect.name
    if name == "postgresql":
        conn.exec_driver_sql(f"SET lock_timeout = {int(timeout * 1000)}")
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_KEY})")
        conn.commit()
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})")
            conn.exec_driver_sql("SET lock_timeout = 0")
            conn.commit()
    elif name in ("mysql", "mariadb"):
        got = conn.exec_driver_sql(f"SELECT GET_LOCK('{_LOCK_NAME}', {int(timeout)})").scalar()
        conn.commit()
        if got != 1:
            raise DatabaseError(f"policy DB: another process held the migration lock for {timeout:.0f} s")
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{_LOCK_NAME}')")
            conn.commit()
    else:
        path = engine.url.database
        if not path or path == ":memory:":
            yield
            return
        with locked(f"{path}.migrate-lock", timeout=timeout):
            yield


def upgrade(engine: Engine, *, timeout: float = 600.0) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; return (revision before, revision after)."""
    script = _script()
    head = head_revision()
    before: dict[str, Any] = {}

    def steps(rev: Any, _context: Any) -> Any:
        before["rev"] = rev
        return script._upgrade_revs(head, rev)

    with database_errors("migrating the schema"), engine.connect() as conn, \
            _migration_lock(conn, engine, timeout):
        with EnvironmentContext(Config(), script, fn=steps, destination_rev=head) as env:
            env.configure(connection=conn, target_metadata=None)
            with env.begin_transaction():
                env.run_migrations()
        conn.commit()
        current = MigrationContext.configure(conn).get_current_revision()
    rev = before.get("rev")
    start = rev[0] if isinstance(rev, tuple) and rev else (rev or None)
    return (str(start) if start else None), str(current)
