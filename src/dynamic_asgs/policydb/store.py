"""The policy store: security groups plus the dataset version, written only when content changes.

Goals and mechanisms:

* **Write only what changed.** :meth:`PolicyStore.replace` compares each incoming row's
  content hash with the stored one: new guids are inserted, changed rows updated in place
  (ids stay stable, so the agents' paging by id stays meaningful), vanished guids deleted,
  unchanged rows untouched. The Go syncer rewrote every row on every sync.
* **One transaction.** Inserts, updates, deletes, the dataset version bump (only when
  something changed, with its ``dataset_versions`` row) and the sync state commit together or not at all, after a fence
  check (the caller's lease) taken first inside the same transaction.
* **Consistent reads.** :meth:`PolicyStore.snapshot` reads the version and all rows in one
  snapshot transaction, so a policy server never serves rows of one version labelled
  with another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dynamic_asgs.policydb.db import database_errors, db_now, read_connection, write_connection
from dynamic_asgs.policydb.tables import INFO_ID, dataset_versions, info, security_groups

__all__ = ["GroupRow", "PolicyStore", "ReplaceResult", "Snapshot", "StoredGroup", "SyncState"]

_CHUNK = 1000
_UPDATED = ("name", "rules", "staging_default", "running_default", "staging_spaces", "running_spaces",
            "content_hash")
#: Raises LeaseLost when the caller may no longer write (see lease.Lease.fence).
Fence = Callable[[Connection], None]


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A security group as stored: ``rules`` is the JSON text, spaces are sorted guids."""

    guid: str
    name: str
    rules: str
    staging_default: bool
    running_default: bool
    staging_spaces: tuple[str, ...]
    running_spaces: tuple[str, ...]

    def content_hash(self) -> str:
        """sha256 over every field the internal API returns for this group."""
        canonical = json.dumps(
            [self.guid, self.name, self.rules, self.staging_default, self.running_default,
             list(self.staging_spaces), list(self.running_spaces)],
            separators=(",", ":"), ensure_ascii=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredGroup:
    """A stored row: :class:`GroupRow` plus its id and content hash."""

    id: int
    row: GroupRow
    content_hash: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All groups of one dataset version, ordered by id."""

    version: int
    changed_at: float
    groups: list[StoredGroup]


@dataclass(frozen=True, slots=True)
class SyncState:
    """The dataset version and what the syncer last confirmed from Cloud Controller."""

    version: int
    changed_at: float
    cc_last_update: str | None
    synced_at: float | None


@dataclass(frozen=True, slots=True)
class ReplaceResult:
    """What one :meth:`PolicyStore.replace` did."""

    inserted: int
    updated: int
    deleted: int
    unchanged: int
    version: int

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)


def _values(row: GroupRow, digest: str) -> dict[str, Any]:
    return {
        "guid": row.guid, "name": row.name, "rules": row.rules,
        "staging_default": row.staging_default, "running_default": row.running_default,
        "staging_spaces": json.dumps(list(row.staging_spaces), separators=(",", ":")),
        "running_spaces": json.dumps(list(row.running_spaces), separators=(",", ":")),
        "content_hash": digest,
    }


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]


class PolicyStore:
    """Reads and writes the policy DB through ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def version(self) -> int:
        """The current dataset version (one cheap query)."""
        with database_errors("reading the dataset version"), self.engine.connect() as conn:
            value = conn.execute(sa.select(info.c.version).where(info.c.id == INFO_ID)).scalar_one()
        return int(value)

    def state(self) -> SyncState:
        """The dataset version and the sync state."""
        with database_errors("reading the sync state"), self.engine.connect() as conn:
            row = conn.execute(sa.select(info).where(info.c.id == INFO_ID)).one()
        return SyncState(int(row.version), float(row.changed_at), row.cc_last_update,
                         None if row.synced_at is None else float(row.synced_at))

    def snapshot(self) -> Snapshot:
        """Every group of the current version, read in one consistent transaction."""
        with database_errors("reading the security groups"), read_connection(self.engine, snapshot=True) as conn:
            head = conn.execute(sa.select(info.c.version, info.c.changed_at).where(info.c.id == INFO_ID)).one()
            rows = conn.execute(sa.select(security_groups).order_by(security_groups.c.id)).all()
        groups = [
            StoredGroup(
                id=int(r.id),
                row=GroupRow(r.guid, r.name, r.rules, bool(r.staging_default), bool(r.running_default),
                             tuple(json.loads(r.staging_spaces)), tuple(json.loads(r.running_spaces))),
                content_hash=r.content_hash,
            )
            for r in rows
        ]
        return Snapshot(int(head.version), float(head.changed_at), groups)

    def replace(self, rows: Sequence[GroupRow], *, cc_last_update: str | None,
                fence: Fence | None = None) -> ReplaceResult:
        """Make the stored groups equal ``rows`` (unique guids), writing only the differences."""
        incoming = {row.guid: (row, row.content_hash()) for row in rows}
        with database_errors("replacing the security groups"), write_connection(self.engine) as conn:
            if fence is not None:
                fence(conn)
            now = db_now(conn)
            stored = {
                r.guid: (int(r.id), r.content_hash)
                for r in conn.execute(sa.select(security_groups.c.guid, security_groups.c.id,
                                                security_groups.c.content_hash))
            }
            inserts = [_values(row, digest) for guid, (row, digest) in incoming.items() if guid not in stored]
            updates = [
                {**_values(row, digest), "row_id": stored[guid][0]}
                for guid, (row, digest) in incoming.items()
                if guid in stored and stored[guid][1] != digest
            ]
            deletes = [row_id for guid, (row_id, _) in stored.items() if guid not in incoming]
            self._apply(conn, inserts, updates, deletes)
            changed = bool(inserts or updates or deletes)
            values: dict[str, Any] = {"cc_last_update": cc_last_update, "synced_at": now}
            if changed:
                values.update(version=info.c.version + 1, changed_at=now)
            conn.execute(sa.update(info).where(info.c.id == INFO_ID).values(**values))
            version = int(conn.execute(sa.select(info.c.version).where(info.c.id == INFO_ID)).scalar_one())
            if changed:
                conn.execute(sa.insert(dataset_versions).values(version=version, changed_at=now))
        return ReplaceResult(len(inserts), len(updates), len(deletes),
                             len(incoming) - len(inserts) - len(updates), version)

    @staticmethod
    def _apply(conn: Connection, inserts: list[dict[str, Any]], updates: list[dict[str, Any]],
               deletes: list[int]) -> None:
        for chunk in _chunks(deletes):
            conn.execute(sa.delete(security_groups).where(security_groups.c.id.in_(chunk)))
        if updates:
            table = security_groups
            statement = (
                sa.update(table).where(table.c.id == sa.bindparam("row_id"))
                .values({c: sa.bindparam(f"new_{c}") for c in _UPDATED})
            )
            for chunk in _chunks(updates):
                conn.execute(statement, [{"row_id": u["row_id"], **{f"new_{c}": u[c] for c in _UPDATED}}
                                         for u in chunk])
        for chunk in _chunks(inserts):
            conn.execute(sa.insert(security_groups), list(chunk))
