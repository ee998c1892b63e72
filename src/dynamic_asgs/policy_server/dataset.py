"""One dataset version in memory, indexed by space, answering the internal API's queries.

Each policy-server worker holds the whole current version: each group's JSON object is
serialised once, globally enabled groups are kept in one list and bound groups in a
space -> ids index, so a query is a few set unions and a join of ready bytes, never a DB round trip.

Semantics (DESIGN.md §3.3, with the Go server's paging faults fixed): the answer holds the
globally enabled groups (running or staging) plus every group bound to a listed space
(running or staging), ordered by id; ``from`` skips ids below it, ``limit`` caps the
page (0: no cap) and ``next`` is the id that starts the next page (0: none).

The ETag is a digest of the *whole* answer for the space set (every group's id and
content hash, across all pages) plus ``from`` and ``limit``: unchanged content keeps the
ETag even across dataset versions, so an agent whose groups did not change gets 304 and
is not woken by an unrelated change.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from dynamic_asgs.policydb.store import Snapshot, StoredGroup

__all__ = ["Answer", "Dataset"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One page: the JSON body, its ETag (quoted), the ``next`` id and the number of groups."""

    body: bytes
    etag: str
    next: int
    count: int


def _serialise(group: StoredGroup) -> bytes:
    row = group.row
    return json.dumps(
        {
            "guid": row.guid,
            "name": row.name,
            "rules": row.rules,
            "staging_default": row.staging_default,
            "running_default": row.running_default,
            "staging_space_guids": list(row.staging_spaces),
            "running_space_guids": list(row.running_spaces),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


class Dataset:
    """An immutable, indexed copy of one dataset version."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.version = snapshot.version
        self.changed_at = snapshot.changed_at
        self.size = len(snapshot.groups)
        self._json: dict[int, bytes] = {}
        self._digest: dict[int, bytes] = {}
        global_ids: list[int] = []
        by_space: dict[str, set[int]] = {}
        for group in snapshot.groups:
            self._json[group.id] = _serialise(group)
            self._digest[group.id] = group.id.to_bytes(8, "big") + bytes.fromhex(group.content_hash)[:16]
            row = group.row
            if row.running_default or row.staging_default:
                global_ids.append(group.id)
            for space in (*row.running_spaces, *row.staging_spaces):
                by_space.setdefault(space, set()).add(group.id)
        self._global = frozenset(global_ids)
        self._global_sorted = sorted(global_ids)
        self._by_space = {space: frozenset(ids) for space, ids in by_space.items()}

    def select(self, spaces: Iterable[str]) -> list[int]:
        """Ids of every group the answer for ``spaces`` contains, ascending."""
        bound = [self._by_space[s] for s in spaces if s in self._by_space]
        if not bound:
            return self._global_sorted
        return sorted(self._global.union(*bound))

    def etag(self, spaces: Iterable[str], *, start: int = 0, limit: int = 0) -> str:
        """The ETag of the page :meth:`answer` would return (without building its body)."""
        return self._etag(self.select(spaces), start, limit)

    def answer(self, spaces: Iterable[str], *, start: int = 0, limit: int = 0) -> Answer:
        """The page of the answer for ``spaces`` that starts at id ``start``, at most ``limit`` long."""
        ids = self.select(spaces)
        selected = ids[bisect.bisect_left(ids, start):] if start > 0 else ids
        following = 0
        if limit and len(selected) > limit:
            following = selected[limit]
            selected = selected[:limit]
        body = b'{"next":%d,"security_groups":[%s]}' % (following, b",".join(self._json[i] for i in selected))
        return Answer(body, self._etag(ids, start, limit), following, len(selected))

    def _etag(self, ids: list[int], start: int, limit: int) -> str:
        digest = hashlib.blake2b(b"".join(self._digest[i] for i in ids), digest_size=16)
        digest.update(f"|{start}|{limit}".encode())
        return f'"{digest.hexdigest()}"'
