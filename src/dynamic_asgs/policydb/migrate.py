"""Schema migrations of the policy DB (Alembic), safe to run from several processes at once.

The policy server runs :func:`upgrade` before it starts serving (``dynamic-asgs
policy-server --migrate-only`` runs just this step, e.g. from a BOSH pre-start); the
syncer runs it too, so either may start first. Concurrent runs are serialised by
:mod:`.migration_lock`, held for the duration: ``pg_advisory_lock`` on PostgreSQL, a lease
row on MySQL/MariaDB (Percona XtraDB Cluster has no ``GET_LOCK``), an ``flock`` beside the
database file on SQLite. Revisions live in
``migrations/versions``; they are applied through Alembic's ``EnvironmentContext``
directly, so no ``alembic.ini`` or ``env.py`` is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from dynamic_asgs.lager import Logger
from dynamic_asgs.policydb.db import database_errors
from dynamic_asgs.policydb.migration_lock import DEFAULT_LEASE_TTL, migration_lock

__all__ = ["current_revision", "head_revision", "upgrade"]


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


def upgrade(engine: Engine, *, timeout: float = 600.0, logger: Logger | None = None,
            lease_ttl: float = DEFAULT_LEASE_TTL) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; return (revision before, revision after).

    Waits up to ``timeout`` seconds for another migrator (``logger`` hears who, if given);
    ``lease_ttl`` is how long a MySQL holder's lease outlives its last renewal.
    """
    log = logger or Logger("dynamic-asgs", level="fatal")  # the lock's info and error lines are optional
    script = _script()
    head = head_revision()
    before: dict[str, Any] = {}

    def steps(rev: Any, _context: Any) -> Any:
        before["rev"] = rev
        return script._upgrade_revs(head, rev)

    with database_errors("migrating the schema"), engine.connect() as conn, \
            migration_lock(conn, timeout=timeout, log=log, ttl=lease_ttl):
        with EnvironmentContext(Config(), script, fn=steps, destination_rev=head) as env:
            env.configure(connection=conn, target_metadata=None)
            with env.begin_transaction():
                env.run_migrations()
        conn.commit()
        current = MigrationContext.configure(conn).get_current_revision()
    rev = before.get("rev")
    start = rev[0] if isinstance(rev, tuple) and rev else (rev or None)
    return (str(start) if start else None), str(current)
