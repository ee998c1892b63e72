"""A named lease in the policy DB: at most one active syncer across instances (replaces Locket).

Mechanisms:

* **The database is the clock.** Expiry times are written and compared in the DB
  server's time (:func:`~dynamic_asgs.policydb.db.db_now`), never a VM's, so clock skew
  between syncer VMs cannot make two holders.
* **Take over only when expired.** :meth:`Lease.acquire` is one conditional ``UPDATE``
  (``holder = me OR expires_at < now``): renewing and taking over are the same atomic
  statement, and of two contenders exactly one matches.
* **Fencing.** :meth:`Lease.fence` runs first inside the syncer's write transaction: it
  locks the lease row (``SELECT ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` serialises
  writers anyway) and raises :class:`~dynamic_asgs.errors.LeaseLost` unless this holder's
  lease is unexpired, so a syncer that stalled past its TTL cannot write after a takeover.
* **Release on shutdown**, so a stopped syncer's successor need not wait for the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dynamic_asgs.errors import LeaseLost
from dynamic_asgs.policydb.db import database_errors, db_now, read_connection, write_connection
from dynamic_asgs.policydb.tables import leases

__all__ = ["SYNCER_LEASE", "Lease", "LeaseStatus"]

#: The lease the syncers compete for.
SYNCER_LEASE = "policy-server-asg-syncer"


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """Who holds a lease and for how many more seconds (negative: expired)."""

    holder: str
    remaining: float


class Lease:
    """The lease ``name`` as seen by ``holder``, with a time-to-live of ``ttl`` seconds."""

    def __init__(self, engine: Engine, *, holder: str, ttl: float, name: str = SYNCER_LEASE) -> None:
        self.engine = engine
        self.holder = holder
        self.ttl = ttl
        self.name = name

    def acquire(self) -> bool:
        """Renew the lease if held, take it if expired; return whether this holder has it now."""
        table = leases
        with database_errors("acquiring the syncer lease"), write_connection(self.engine) as conn:
            now = db_now(conn)
            result = conn.execute(
                sa.update(table)
                .where(table.c.name == self.name, sa.or_(table.c.holder == self.holder, table.c.expires_at < now))
                .values(
                    holder=self.holder,
                    expires_at=now + self.ttl,
                    acquired_at=sa.case((table.c.holder == self.holder, table.c.acquired_at), else_=now),
                )
            )
            if result.rowcount == 1:
                return True
            exists = conn.execute(sa.select(table.c.name).where(table.c.name == self.name)).first()
            if exists is None:
                conn.execute(sa.insert(table).values(name=self.name, holder=self.holder, acquired_at=now,
                                                     expires_at=now + self.ttl))
                return True
        return False

    def release(self) -> None:
        """Give the lease up now (only if this holder has it)."""
        with database_errors("releasing the syncer lease"), write_connection(self.engine) as conn:
            conn.execute(
                sa.update(leases)
                .where(leases.c.name == self.name, leases.c.holder == self.holder)
                .values(expires_at=0.0)
            )

    def status(self) -> LeaseStatus | None:
        """The current holder and remaining time, or ``None`` if the lease row is missing."""
        with database_errors("reading the syncer lease"), read_connection(self.engine) as conn:
            now = db_now(conn)
            row = conn.execute(sa.select(leases).where(leases.c.name == self.name)).first()
        if row is None:
            return None
        return LeaseStatus(row.holder, float(row.expires_at) - now)

    def fence(self, conn: Connection) -> None:
        """Inside a write transaction: lock the lease row; raise LeaseLost unless it is ours and live."""
        row = conn.execute(
            sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == self.name).with_for_update()
        ).first()
        now = db_now(conn)
        if row is None or row.holder != self.holder or float(row.expires_at) <= now:
            holder = "nobody" if row is None or not row.holder else row.holder
            raise LeaseLost(f"syncer lease {self.name!r} is held by {holder}, not {self.holder}; not writing")
