"""One poll of the syncer: skip when nothing changed, otherwise list, validate and store.

A poll that finds CC's ``last_update`` equal to the value stored with the data costs one
request to CC and no DB write. Otherwise the listing (stable across pages, see
:mod:`dynamic_asgs.cc.client`) is validated completely *before* the store is touched, and
the store writes only changed rows in one fenced transaction. Any failure raises and
leaves the DB as it was; the daemon decides about retries. A group that cannot be stored
is dropped alone (:mod:`dynamic_asgs.syncer.convert`): logged as
``security-groups-dropped`` and counted in ``security_groups_dropped``, the rest is stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dynamic_asgs.cc.client import Listing
from dynamic_asgs.errors import DatabaseError, RuleError
from dynamic_asgs.lager import Logger
from dynamic_asgs.policydb.store import Fence, GroupRow, ReplaceResult, SyncState
from dynamic_asgs.syncer.convert import rows_from_resources
from dynamic_asgs.syncer.metrics import SyncerMetrics

__all__ = ["CloudControllerSource", "PollResult", "Store", "Syncer"]

_INVALID_EXAMPLES = 5


class CloudControllerSource(Protocol):
    """What the syncer needs from Cloud Controller (see cc.client.CloudController)."""

    def last_update(self) -> str | None: ...

    def security_groups(self, *, last_update: str | None = None) -> Listing: ...


class Store(Protocol):
    """What the syncer needs from the policy store (see policydb.store.PolicyStore)."""

    def state(self) -> SyncState: ...

    def replace(self, rows: list[GroupRow], *, cc_last_update: str | None, fence: Fence | None = None
                ) -> ReplaceResult: ...


@dataclass(frozen=True, slots=True)
class PollResult:
    """What a poll did: ``unchanged`` (skipped), ``no_changes`` (listed, nothing to write) or ``changed``."""

    outcome: str
    last_update: str | None
    result: ReplaceResult | None = None
    seconds: float = 0.0


class Syncer:
    """Copies Cloud Controller's security groups into the policy store."""

    def __init__(self, *, cc: CloudControllerSource, store: Store, fence: Fence | None,
                 logger: Logger, metrics: SyncerMetrics) -> None:
        self.cc = cc
        self.store = store
        self.fence = fence
        self.log = logger
        self.metrics = metrics

    def poll(self) -> PollResult:
        """Run one poll; raise a DynamicASGsError when it fails (nothing is written then)."""
        start = time.monotonic()
        last_update = self.cc.last_update()
        state = self.store.state()
        if last_update is not None and last_update == state.cc_last_update:
            self._done("unchanged", state.version)
            self.log.debug("poll-unchanged", {"last_update": last_update, "version": state.version})
            return PollResult("unchanged", last_update, seconds=time.monotonic() - start)
        listing = self.cc.security_groups(last_update=last_update)
        self.metrics.retrieval.observe(time.monotonic() - start)
        converted = rows_from_resources(listing.resources)
        self._report_invalid(converted.invalid_rules)
        self._report_dropped(converted.dropped)
        result = self._store(converted.rows, listing.last_update)
        seconds = time.monotonic() - start
        self.metrics.total.observe(seconds)
        outcome = "changed" if result.changed else "no_changes"
        self._done(outcome, result.version)
        self.metrics.stored.set(len(converted.rows))
        for op, count in (("insert", result.inserted), ("update", result.updated), ("delete", result.deleted)):
            self.metrics.rows.labels(op=op).inc(count)
        self.log.info("sync-complete", {
            "outcome": outcome, "security_groups": len(converted.rows), "inserted": result.inserted,
            "updated": result.updated, "deleted": result.deleted, "version": result.version,
            "last_update": listing.last_update, "pages": listing.pages, "listing_attempts": listing.attempts,
            "invalid_rules": len(converted.invalid_rules), "dropped_groups": len(converted.dropped),
            "duration_seconds": round(seconds, 3),
        })
        return PollResult(outcome, listing.last_update, result, seconds)

    def _store(self, rows: list[GroupRow], last_update: str | None) -> ReplaceResult:
        start = time.monotonic()
        try:
            result = self.store.replace(rows, cc_last_update=last_update, fence=self.fence)
        except DatabaseError:
            self.metrics.replace.labels(result="error").observe(time.monotonic() - start)
            raise
        self.metrics.replace.labels(result="success").observe(time.monotonic() - start)
        return result

    def _done(self, outcome: str, version: int) -> None:
        self.metrics.polls.labels(outcome=outcome).inc()
        self.metrics.version.set(version)
        self.metrics.last_sync.set(time.time())

    def _report_invalid(self, errors: Sequence[RuleError]) -> None:
        self.metrics.invalid_rules.set(len(errors))
        if errors:
            self.log.info("invalid-rules", {
                "count": len(errors),
                "examples": [str(e) for e in errors[:_INVALID_EXAMPLES]],
                "note": "stored as Cloud Controller gave them; cells drop these rules",
            })

    def _report_dropped(self, reasons: Sequence[str]) -> None:
        self.metrics.dropped.set(len(reasons))
        if reasons:
            self.log.error("security-groups-dropped", None, {
                "count": len(reasons), "examples": list(reasons[:_INVALID_EXAMPLES]),
                "note": "these groups cannot be stored and grant nothing; the others are stored",
            })
