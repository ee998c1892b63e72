"""One cell's ASG convergence: store + policy server -> desired chains -> dataplane.

Goals and the mechanism serving each:

* **Keep enforcing through faults** — a policy server that is down, slow or wrong
  leaves the current rules in place (the cached groups keep planning new store
  entries whose spaces they cover); an unreadable store keeps the last good view.
* **Nothing done twice** — groups are fetched with ``If-None-Match`` and re-indexed
  only when they changed; the dataplane writes only containers whose hash changed.
* **Serialised** — full cycles, forced syncs and cleanups take one lock, so a force
  call from the CNI never interleaves with a cycle.
* **Provable** — per container the agent records which dataset version it enforces
  and since when (``/asg-status``, the fleet audit, ``asg_containers_lagging``); every
  change is logged and announced in the app's log stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.agent.dataplane.report import ApplyReport
from dynamic_asgs.agent.metrics import AgentMetrics
from dynamic_asgs.agent.policy_client import Result
from dynamic_asgs.agent.refused_spaces import RefusedSpaces
from dynamic_asgs.asg.model import Container, SecurityGroup
from dynamic_asgs.asg.translate import ChainSettings, ContainerChains, GroupIndex, plan_container
from dynamic_asgs.errors import DynamicASGsError, RefusedRequest, StoreError, UpstreamError
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import StoreView

__all__ = ["APP_MESSAGE", "Converger", "Emitter", "PolicySource"]

APP_MESSAGE = "Security group rules were updated"


class PolicySource(Protocol):
    """What the converger needs from the policy server (real: :class:`.policy_client.PolicyClient`)."""

    def fetch(self, space_guids: Iterable[str], *, etag: str | None = None, wait: float | None = None) -> Result: ...


class Emitter(Protocol):
    """Where app-visible log lines go (real: :class:`~dynamic_asgs.agent.loggregator.AppLogEmitter`)."""

    def emit(self, container: Container, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Enforced:
    """Which dataset version a container enforces, and since when (UNIX time)."""

    dataset_version: int | None
    since: float


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class Converger:
    """Plans and applies the ASG chains of every container on the cell."""

    def __init__(
        self,
        *,
        view: StoreView,
        policy: PolicySource,
        dataplane: Dataplane,
        settings: ChainSettings,
        logger: Logger,
        metrics: AgentMetrics,
        emitter: Emitter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._view, self._policy, self._dataplane = view, policy, dataplane
        self._settings, self._metrics, self._emitter, self._clock = settings, metrics, emitter, clock
        self._log = logger.session("converger")
        self._lock = threading.RLock()
        self._index: GroupIndex | None = None
        self._etag: str | None = None
        self._spaces: frozenset[str] = frozenset()
        self.dataset_version: int | None = None
        self.dataset_changed_at: float | None = None
        self._enforced: dict[str, Enforced] = {}
        self._invalid_logged: set[str] = set()
        self._dropped_logged: set[str] = set()
        self._refused = RefusedSpaces()
        self._store_errors = 0
        self._latency_version: int | None = None
        self.last_cycle: dict[str, Any] = {}
        self.policy_error: str | None = None
        self.policy_ok_at: float | None = None
        self.drift_repaired = 0
        #: Seconds the last whole-table read took (all families); paces verification.
        self.last_read_seconds = 0.0
        #: When (monotonic) a cycle last wrote chains: their fingerprints are learned at the next read.
        self.last_write = 0.0
        self.last_drift: dict[str, Any] | None = None

    # -- entry points --------------------------------------------------------------------

    def cycle(self, kind: str = "full") -> ApplyReport | None:
        """A full cycle; returns the dataplane's report (None when nothing could be planned)."""
        with self._lock:
            started = time.monotonic()
            try:
                report = self._cycle()
            except DynamicASGsError as exc:
                self._log.error("cycle-failed", exc, {"kind": kind})
                self._finish_cycle(kind, started, None, str(exc))
                return None
            self._finish_cycle(kind, started, report, None if report is None or report.ok else "see failed")
            return report

    def sync_container(self, handle: str) -> None:
        """Forced sync of one container (the CNI's call); raises with the reason on failure."""
        with self._lock:
            self._refresh_store()
            container = self._view.containers.get(handle)
            if container is None:
                raise LookupError(f"container {handle} is not in the container metadata store")
            if not container.policy_group_id or not container.space_id:
                return  # not an app container, or no space: no ASG chain (as silk)
            if self._index is None or container.space_id not in self._spaces:
                self._refresh_groups(self._spaces | {container.space_id})
            assert self._index is not None
            plan = plan_container(container, self._index, self._settings)
            assert plan is not None
            started = time.monotonic()
            report = self._dataplane.apply_one(plan)
            self._metrics.enforce.labels(kind="forced").observe(time.monotonic() - started)
            self._account(report, {handle: plan}, partial=True)
            problem = report.refused.get(handle) or report.failed.get(handle) or report.skipped.get(handle)
            self._metrics.cycles.labels(kind="forced", result="error" if problem else "ok").inc()
            if problem:
                raise RuntimeError(problem)

    def cleanup_container(self, handle: str) -> None:
        """Remove the chains of every container no longer in the store (the CNI's DEL call).

        ``handle`` names the container the CNI is deleting; its chains go only once its
        store entry is gone (the CNI removes the entry first): a container still in the
        store is never unprotected by a cleanup call.
        """
        with self._lock:
            self._refresh_store()
            self._require_store()
            live = set(self._view.containers)
            if handle in live:
                self._log.info("cleanup-kept-live-container", {"handle": handle,
                                                                "reason": "still in the container metadata store"})
            started = time.monotonic()
            report = self._dataplane.remove_orphans(live)
            self._metrics.cleanup.observe(time.monotonic() - started)
            self._record_families(report)
            for gone in set(self._enforced) - live:
                del self._enforced[gone]
            self._metrics.cycles.labels(kind="cleanup", result="ok" if report.ok else "error").inc()
            if not report.ok:
                reasons = [f.error for f in report.families.values() if f.error]
                raise RuntimeError("; ".join(reasons) or "cleanup incomplete")

    def settle(self) -> ApplyReport | None:
        """Look again at containers waiting for their CNI or watched after a write (no policy request).

        Plans them from the groups already fetched; a container whose space those do
        not cover waits for the next full cycle.
        """
        with self._lock:
            looking = self._dataplane.looking()
            if self._index is None or not looking:
                return None
            self._refresh_store()
            plans: dict[str, ContainerChains] = {}
            for handle in looking:
                container = self._view.containers.get(handle)
                if container is None or not container.policy_group_id or container.space_id not in self._spaces:
                    continue
                plan = plan_container(container, self._index, self._settings)
                if plan is not None:
                    plans[handle] = plan
            started = time.monotonic()
            report = self._dataplane.settle(plans)
            self._metrics.enforce.labels(kind="settle").observe(time.monotonic() - started)
            self._account(report, plans, partial=True)
            self._metrics.cycles.labels(kind="settle", result="ok" if report.ok else "error").inc()
            return report

    def next_look(self) -> float | None:
        """When (clock time) a waiting or watched container is next due a look."""
        return self._dataplane.next_look()

    def query(self) -> tuple[frozenset[str], str | None]:
        """The spaces and ETag of the current groups (for the blocking-query watcher)."""
        with self._lock:
            return self._spaces, self._etag

    def invalidate_kernel(self) -> None:
        """Make the next cycle read the kernel table again (to catch outside edits)."""
        self._dataplane.invalidate()

    def store_changed(self) -> bool:
        """Whether the container store changed since it was last read (cheap: a stat and a read)."""
        try:
            return self._view.store.signature() != self._view.signature
        except DynamicASGsError:
            return False

    # -- a cycle ---------------------------------------------------------------------------

    def _refresh_store(self) -> None:
        started = time.monotonic()
        self._view.refresh()
        self._metrics.metadata.observe(time.monotonic() - started)
        if self._view.errors > self._store_errors:
            self._metrics.store_errors.inc(self._view.errors - self._store_errors)
            self._store_errors = self._view.errors

    def _require_store(self) -> None:
        """Refuse to plan or sweep when the store was never read: unreadable is not empty (issue 8)."""
        if self._view.signature is None and self._view.last_error is not None:
            raise StoreError(f"container metadata store not read yet, keeping every chain: {self._view.last_error}")

    def _refresh_groups(self, spaces: Collection[str]) -> None:
        """Fetch the groups of ``spaces``, setting aside any space the server refuses (issue 13)."""
        ask = self._refused.askable(spaces, self._clock())
        try:
            self._fetch_groups(ask)
        except RefusedRequest as exc:
            if not ask:
                raise
            bad = self._refused.isolate(ask, self._policy.fetch, self._clock(), exc)
            for space in sorted(bad):
                self._log.error("space-refused-by-policy-server", self._refused.reasons()[space],
                                {"space_guid": space, "effect": "its containers keep their current rules; "
                                 "the others are updated"})
            self._fetch_groups(ask - bad)
            ask = ask - bad
        self._refused.accepted(ask)
        self._metrics.refused_spaces.set(len(self._refused.reasons()))

    def _fetch_groups(self, spaces: frozenset[str]) -> None:
        same = self._index is not None and spaces == self._spaces
        started = time.monotonic()
        try:
            result = self._policy.fetch(spaces, etag=self._etag if same else None)
        except UpstreamError as exc:
            self._metrics.policy_errors.inc()
            if self.policy_error != str(exc):
                self._log.error("policy-server-unavailable-keeping-rules", exc)
            self.policy_error = str(exc)
            raise
        finally:
            self._metrics.policy_poll.observe(time.monotonic() - started)
        if self.policy_error is not None:
            self._log.info("policy-server-recovered")
        self.policy_error, self.policy_ok_at = None, self._clock()
        if result.dataset_version != self.dataset_version:
            self.dataset_changed_at = result.changed_at if result.changed_at is not None else self._clock()
        self.dataset_version = result.dataset_version
        if result.not_modified:
            return
        self._index = GroupIndex(result.groups)
        self._etag, self._spaces = result.etag, spaces
        self._log_dropped(result.dropped)
        self._log_invalid(result.groups)
        self._metrics.invalid_rules.set(sum(len(g.invalid_rules) for g in result.groups))
        if self.dataset_version is not None:
            self._metrics.version.set(self.dataset_version)

    def _log_dropped(self, dropped: Iterable[str]) -> None:
        current = set(dropped)
        for message in sorted(current - self._dropped_logged):
            self._log.error("security-group-dropped-invalid", message, {"effect": "the group grants nothing "
                                                                                   "(fail closed); the others apply"})
        self._dropped_logged = current
        self._metrics.dropped_groups.set(len(current))

    def _log_invalid(self, groups: Iterable[SecurityGroup]) -> None:
        current = {str(err) for g in groups for err in g.invalid_rules}
        for message in sorted(current - self._invalid_logged):
            self._log.error("rule-dropped-invalid", message, {"effect": "rule grants nothing (fail closed)"})
        self._invalid_logged = current

    def _cycle(self) -> ApplyReport:
        self._refresh_store()
        self._require_store()
        containers = {h: c for h, c in self._view.containers.items() if c.policy_group_id and c.space_id}
        spaces = frozenset(c.space_id for c in containers.values())
        complete = True
        try:
            self._refresh_groups(spaces)
        except UpstreamError:
            if self._index is None:
                raise  # never had groups: nothing to plan, the current rules stay
            if not {s for s in spaces if s not in self._refused} <= self._spaces:
                complete = False  # plan what the cached groups cover; sweep nothing
                containers = {h: c for h, c in containers.items()
                              if c.space_id in self._spaces or c.space_id in self._refused}
        refused = self._refused.reasons()
        held = {h: f"space {c.space_id} refused by the policy server ({refused[c.space_id][:200]}): its current "
                   "rules are kept" for h, c in containers.items() if c.space_id in refused}
        containers = {h: c for h, c in containers.items() if h not in held}
        assert self._index is not None
        desired: dict[str, ContainerChains] = {}
        for handle, container in containers.items():
            plan = plan_container(container, self._index, self._settings)
            if plan is not None:
                desired[handle] = plan
        started = time.monotonic()
        report = self._dataplane.apply(desired, complete=complete, keep=held)
        self._metrics.enforce.labels(kind="full").observe(time.monotonic() - started)
        self._account(report, desired, partial=not complete)
        return report

    # -- bookkeeping -----------------------------------------------------------------------

    def _record_families(self, report: ApplyReport) -> None:
        if report.changes:
            self.last_write = time.monotonic()
        reads = [f.read_seconds for f in report.families.values() if f.read_seconds is not None]
        if reads:
            self.last_read_seconds = sum(reads)
        for version, fam in report.families.items():
            family = str(version)
            self._metrics.restores.labels(family=family).inc(fam.commits)
            self._metrics.restore_failures.labels(family=family).inc(fam.restores - fam.commits)
            self._metrics.payload_lines.labels(family=family).inc(fam.payload_lines)
            self._metrics.lock_wait.labels(family=family).inc(fam.lock_wait_seconds)

    def _account(self, report: ApplyReport, planned: Mapping[str, ContainerChains], *, partial: bool) -> None:
        """Log and announce changes; record which dataset version each container enforces."""
        self._record_families(report)
        now = self._clock()
        old: dict[str, int] = {}
        new: dict[str, int] = {}
        replaced: set[str] = set()  # had a ruleset before: the app is told; a new container is not
        for change in report.changes:
            if change.old_digest is not None:
                replaced.add(change.handle)
            old[change.handle] = old.get(change.handle, 0) + (change.old_rules or 0)
            new[change.handle] = new.get(change.handle, 0) + change.new_rules
        for handle in report.changed:
            container = planned[handle].container if handle in planned else None
            self._log.info("container-rules-updated", {
                "handle": handle, "app_guid": container.app_guid if container else "",
                "space_guid": container.space_id if container else "",
                "old_rules": old[handle], "new_rules": new[handle], "dataset_version": self.dataset_version})
            self._metrics.updates.inc()
            if container is not None and self._emitter is not None and handle in replaced:
                self._emitter.emit(container, APP_MESSAGE)
        for handle, reason in report.drifted.items():
            self._metrics.drift.inc()
            self.drift_repaired += 1
            self.last_drift = {"handle": handle, "reason": reason, "at": _iso(now)}
        for handle in planned:
            if handle in report.failed or handle in report.skipped or handle in report.refused:
                continue
            record = self._enforced.get(handle)
            if record is None or record.dataset_version != self.dataset_version:
                self._enforced[handle] = Enforced(self.dataset_version, now)
        if not partial:
            for gone in set(self._enforced) - set(planned):
                del self._enforced[gone]

    def _finish_cycle(self, kind: str, started: float, report: ApplyReport | None, error: str | None) -> None:
        seconds = time.monotonic() - started
        self._metrics.total.labels(kind=kind).observe(seconds)
        self._metrics.cycles.labels(kind=kind, result="error" if error else "ok").inc()
        state = self._dataplane.state()
        lagging = sum(1 for h, r in self._enforced.items() if h in state and r.dataset_version != self.dataset_version)
        self._metrics.lagging.set(lagging)
        self._metrics.rules.set(sum(a.rule_count for a in state.values()))
        if report is not None:
            self._metrics.containers.labels(state="enforced").set(len(state))
            self._metrics.containers.labels(state="skipped").set(len(report.skipped))
            self._metrics.containers.labels(state="failed").set(len(report.failed))
            self._metrics.containers.labels(state="refused").set(len(report.refused))
            if report.ok and lagging == 0:
                self._observe_latency()
        if error is None:
            self._metrics.last_cycle.set(self._clock())
        self.last_cycle = {
            "kind": kind, "finished_at": _iso(self._clock()), "duration_seconds": round(seconds, 6),
            "error": error, "report": report.summary() if report else None,
            "failed": dict(report.failed) if report else {}, "skipped": dict(report.skipped) if report else {},
            "refused": dict(report.refused) if report else {}, "drifted": dict(report.drifted) if report else {},
        }

    def _observe_latency(self) -> None:
        """Once per dataset version that changed while we ran: change -> enforced on every container."""
        version = self.dataset_version
        if version is None or version == self._latency_version:
            return
        if self._latency_version is not None and self.dataset_changed_at is not None:
            self._metrics.latency.observe(max(0.0, self._clock() - self.dataset_changed_at))
        self._latency_version = version

    def status(self) -> dict[str, Any]:
        """What ``/asg-status`` shows: per container, cell totals, the last cycle."""
        with self._lock:
            state = self._dataplane.state()
            containers: dict[str, Any] = {}
            for handle, applied in sorted(state.items()):
                c = self._view.containers.get(handle)
                record = self._enforced.get(handle)
                containers[handle] = {
                    "app_guid": c.app_guid if c else None,
                    "space_guid": c.space_id if c else None,
                    "workload": c.raw_workload if c else None,
                    "ruleset": {f"ipv{v}": d for v, d in applied.digests.items()},
                    "rule_count": applied.rule_count,
                    "applied_at": _iso(applied.applied_at),
                    "verified_at": _iso(applied.verified_at),
                    "dataset_version": record.dataset_version if record else None,
                    "enforcing_since": _iso(record.since) if record else None,
                }
            lagging = [h for h, v in containers.items() if v["dataset_version"] != self.dataset_version]
            return {
                "dataset_version": self.dataset_version,
                "dataset_changed_at": _iso(self.dataset_changed_at),
                "containers": containers,
                "totals": {"containers": len(containers), "rules": sum(v["rule_count"] for v in containers.values()),
                           "lagging": len(lagging), "store_entries": len(self._view.containers),
                           "invalid_store_entries": len(self._view.invalid)},
                "last_cycle": self.last_cycle,
                "drift": {"repaired": self.drift_repaired, "last": self.last_drift},
                "settling": sorted(self._dataplane.looking()),
                "policy_server": {"error": self.policy_error, "last_success": _iso(self.policy_ok_at),
                                  "refused_spaces": self._refused.reasons()},
                "store": {"error": self._view.last_error},
            }
