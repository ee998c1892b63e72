"""The syncer daemon's two loops: lease keeping and polling (around :class:`~.sync.Syncer`).

Goals and mechanisms:

* **One active syncer.** A :class:`LeaseKeeper` thread renews the DB lease every third of
  its TTL (and runs the schema migration first, retrying while the DB is unreachable).
  Standbys try to take the lease at the same pace and poll only while they hold it.
* **Poll on time.** The first poll runs as soon as the lease is held, then every
  ``asg_poll_interval_seconds``.
* **Survive.** A failed poll (CC, UAA, DB, an unstable or malformed listing) is retried
  with full-jitter exponential backoff; once failures have lasted
  ``retry_deadline_seconds`` they are reported (error log, ``security_groups_sync_failing``
  = 1) and retries continue at the poll interval. Nothing is written by a failed poll.
* **Refusals are loud.** An answer of CC or UAA that broke a bound (a redirect, too many
  bytes or pages, inconsistent pages, the listing deadline; see
  :mod:`dynamic_asgs.cc.client`) is logged at once as ``cc-answer-refused``, naming the
  bound, its configuration key and the URL (without secrets), and counted in
  ``security_groups_sync_refusals_total{reason}``; then it is retried like any failure.
  The daemon exits only on invalid configuration (status 2) or a signal (status 0,
  releasing the lease so a standby takes over at once).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import assert_never

from dynamic_asgs.errors import (
    DatabaseError,
    DynamicASGsError,
    LeaseLost,
    Refusal,
    RefusedAnswer,
    UnstableListing,
    ValidationError,
)
from dynamic_asgs.lager import Logger
from dynamic_asgs.syncer.lease import Lease
from dynamic_asgs.syncer.metrics import SyncerMetrics
from dynamic_asgs.syncer.sync import Syncer

__all__ = ["LeaseKeeper", "SyncLoop"]

_MAX_BACKOFF = 30.0


class LeaseKeeper:
    """Keeps (or waits for) the syncer lease in a background thread."""

    def __init__(self, lease: Lease, *, logger: Logger, metrics: SyncerMetrics, wake: threading.Event,
                 prepare: Callable[[], None] | None = None) -> None:
        self.lease = lease
        self.log = logger
        self.metrics = metrics
        self.held = threading.Event()
        self._wake = wake
        self._prepare = prepare
        self._stop = threading.Event()
        self._valid_until = 0.0
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and release the lease if held."""
        self._stop.set()
        self._thread.join()
        if self.held.is_set():
            self.held.clear()
            self.metrics.lease_held.set(0)
            try:
                self.lease.release()
                self.log.info("lease-released", {"holder": self.lease.holder})
            except DatabaseError as exc:
                self.log.error("lease-release-failed", exc)

    def lost(self) -> None:
        """The store refused a write: the lease is gone."""
        self._set(False)

    def tick(self) -> None:
        """One attempt: prepare (once), then acquire or renew."""
        try:
            if self._prepare is not None:
                self._prepare()
                self._prepare = None
            acquired = self.lease.acquire()
        except DynamicASGsError as exc:
            self.log.error("lease-renew-failed", exc)
            if time.monotonic() >= self._valid_until:
                self._set(False)
            return
        if acquired:
            # Margin: the DB clock decides; assume we lost it a third of the TTL early.
            self._valid_until = time.monotonic() + self.lease.ttl * 2 / 3
        self._set(acquired)

    def _run(self) -> None:
        interval = self.lease.ttl / 3
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(interval)

    def _set(self, held: bool) -> None:
        if held and not self.held.is_set():
            self.held.set()
            self.log.info("lease-acquired", {"holder": self.lease.holder, "ttl_seconds": self.lease.ttl})
            self._wake.set()
        elif not held and self.held.is_set():
            self.held.clear()
            self.log.info("lease-lost", {"holder": self.lease.holder})
        self.metrics.lease_held.set(1 if held else 0)


def _bound(reason: Refusal) -> str:
    """The bound (its configuration key, where it has one) behind a refusal."""
    match reason:
        case Refusal.REDIRECT:
            return "no redirects are followed"
        case Refusal.RESPONSE_SIZE:
            return "cc_max_response_bytes"
        case Refusal.PAGES:
            return "cc_max_pages"
        case Refusal.PAGING:
            return "consistent pages"
        case Refusal.DEADLINE:
            return "cc_listing_deadline_seconds"
        case _:
            assert_never(reason)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, RefusedAnswer):
        return "refused"
    if isinstance(exc, UnstableListing):
        return "unstable"
    if isinstance(exc, ValidationError):
        return "invalid"
    if isinstance(exc, DatabaseError):
        return "database"
    if isinstance(exc, DynamicASGsError):
        return "cc"
    return "internal"


class SyncLoop:
    """Polls while the lease is held; retries failures within the deadline, then reports them."""

    def __init__(self, syncer: Syncer, keeper: LeaseKeeper, *, interval: float, retry_deadline: float,
                 logger: Logger, metrics: SyncerMetrics, stop: threading.Event, wake: threading.Event) -> None:
        self.syncer = syncer
        self.keeper = keeper
        self.interval = interval
        self.retry_deadline = retry_deadline
        self.log = logger
        self.metrics = metrics
        self.stop = stop
        self.wake = wake
        self._failing_since: float | None = None
        self._attempt = 0

    def run(self) -> None:
        """Loop until ``stop`` is set."""
        next_poll = 0.0
        while not self.stop.is_set():
            if not self.keeper.held.is_set():
                next_poll = 0.0  # poll at once when the lease is (re)gained
                self._sleep(self.keeper.lease.ttl / 3)
                continue
            delay = next_poll - time.monotonic()
            if delay > 0:
                self._sleep(delay)
                continue
            next_poll = time.monotonic() + self.poll_once()

    def poll_once(self) -> float:
        """Run one poll; return the seconds until the next one."""
        try:
            self.syncer.poll()
        except LeaseLost as exc:
            self.metrics.failures.labels(kind="lease").inc()
            self.log.info("lease-lost-before-write", {"error": str(exc)})
            self.keeper.lost()
            return 0.0
        except Exception as exc:  # every failure is retried; only bad configuration stops the daemon
            return self._failed(exc)
        if self._failing_since is not None:
            self.log.info("sync-recovered", {"failed_for_seconds": round(time.monotonic() - self._failing_since, 1)})
        self._failing_since, self._attempt = None, 0
        self.metrics.failing.set(0)
        return self.interval

    def _failed(self, exc: Exception) -> float:
        now = time.monotonic()
        kind = _kind(exc)
        if isinstance(exc, RefusedAnswer):
            self.metrics.refusals.labels(reason=exc.reason.value).inc()
            self.log.error("cc-answer-refused", exc, {"reason": exc.reason.value, "bound": _bound(exc.reason),
                                                      "limit": exc.limit, "url": exc.url})
        self.metrics.failures.labels(kind=kind).inc()
        self.metrics.polls.labels(outcome="failed").inc()
        if self._failing_since is None:
            self._failing_since = now
        elapsed = now - self._failing_since
        self._attempt += 1
        error = exc if isinstance(exc, DynamicASGsError) else f"{type(exc).__name__}: {exc}"
        data = {"kind": kind, "attempt": self._attempt, "failing_for_seconds": round(elapsed, 1)}
        if elapsed >= self.retry_deadline:
            self.metrics.failing.set(1)
            self.log.error("sync-failed", error, {**data, "retry_deadline_seconds": self.retry_deadline,
                                                  "note": "keeping the stored data; still retrying"})
            return self.interval
        self.log.info("sync-retrying", {**data, "error": str(error)})
        cap = min(_MAX_BACKOFF, self.interval, self.retry_deadline - elapsed)
        return random.uniform(0.5, max(0.5, min(cap, 2.0 ** self._attempt)))

    def _sleep(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()
