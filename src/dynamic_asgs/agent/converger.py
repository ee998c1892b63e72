"""One cell's ASG convergence: store + policy server -> desired chains -> dataplane.

Goals and the mechanism serving each:

* **Keep enforcing through faults** — a policy server that is down, slow or wrong
  leaves the current rules in place (the cached groups keep planning new store
  entries whose spaces they cover); an unreadable store keeps the last good view.
* **Nothing done twice** — groups are fetched with ``If-None-Match`` and re-indexed
  only when they changed; the dataplane writes only containers whose hash changed.
* **Serialised** — full cycles, forced syncs, cleanups, settle passes and every other
  dataplane call take the agent's one lock, so a force call from the CNI never
  interleaves with a cycle.
* **Status never waits** — every dataplane write, and the end of each call, publishes a
  frozen :class:`~.status.AgentStatus` snapshot; ``/asg-status`` returns the last one
  without taking the lock, so it answers while a cycle runs (or hangs on the iptables
  lock). A write is published before the converger logs, counts or announces it.
* **One job per module** — a full cycle returns a frozen :class:`~.results.CycleResult`;
  the :class:`~.ledger.Ledger` records which dataset version each container enforces and
  since when (``/asg-status``, the fleet audit, ``asg_containers_lagging``);
  :class:`~.metrics.AgentMetrics` observes every result; every change is logged and
  announced in the app's log stream here.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime
from typing import Protocol

from dynamic_asgs.agent import status as st
from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.agent.dataplane.report import AppliedContainer, ApplyReport
from dynamic_asgs.agent.denials import DeniedEgress
from dynamic_asgs.agent.ledger import Ledger
from dynamic_asgs.agent.metrics import AgentMetrics
from dynamic_asgs.agent.policy_client import Result
from dynamic_asgs.agent.refused_spaces import RefusedSpaces
from dynamic_asgs.agent.results import CycleKind, CycleResult
from dynamic_asgs.asg.model import Container, SecurityGroup
from dynamic_asgs.asg.translate import ChainSettings, ContainerChains, GroupIndex, plan_container
from dynamic_asgs.errors import (
    DynamicASGsError,
    EnforcementFailed,
    RefusedRequest,
    StoreError,
    UnknownContainer,
    UpstreamError,
)
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import StoreView

__all__ = ["APP_MESSAGE", "Converger", "Denials", "Emitter", "PolicySource"]

APP_MESSAGE = "Security group rules were updated"


class PolicySource(Protocol):
    """What the converger needs from the policy server (real: :class:`.policy_client.PolicyClient`)."""

    def fetch(self, space_guids: Iterable[str], *, etag: str | None = None, wait: float | None = None) -> Result: ...


class Emitter(Protocol):
    """Where app-visible log lines go (real: :class:`~dynamic_asgs.agent.loggregator.AppLogEmitter`)."""

    def emit(self, container: Container, message: str) -> None: ...


class Denials(Protocol):
    """Denied egress per container (real: :class:`~.denials.DenialWatcher`): told of rule changes, read by status."""

    def rules_replaced(self, handles: Collection[str], at: float, version: int | None) -> None: ...

    def counts(self) -> Mapping[str, DeniedEgress]: ...


def _instant(ts: float | None) -> datetime | None:
    return None if ts is None else st.instant(ts)


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
        denials: Denials | None = None,
        on_publish: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._view, self._policy, self._dataplane = view, policy, dataplane
        self._denials, self._on_publish = denials, on_publish
        self._settings, self._metrics, self._emitter, self._clock = settings, metrics, emitter, clock
        self._log = logger.session("converger")
        #: The agent's one lock: every store read, policy request and dataplane call is made holding it.
        self._lock = threading.Lock()
        self._index: GroupIndex | None = None
        self._etag: str | None = None
        self._spaces: frozenset[str] = frozenset()
        self.dataset_version: int | None = None
        self.dataset_changed_at: float | None = None
        self._ledger = Ledger()
        self._invalid_logged: set[str] = set()
        self._dropped_logged: set[str] = set()
        self._refused = RefusedSpaces()
        self._store_errors = 0
        self._last_cycle: st.LastCycle | None = None
        self._policy_error: str | None = None
        self._policy_ok_at: float | None = None
        #: Seconds the last whole-table read took (all families); paces verification.
        self.last_read_seconds = 0.0
        #: When (monotonic) a cycle last wrote chains: their fingerprints are learned at the next read.
        self.last_write = 0.0
        with self._lock:
            self._publish()

    # -- entry points --------------------------------------------------------------------

    def cycle(self, kind: CycleKind = CycleKind.FULL) -> CycleResult:
        """A full cycle; its result carries the dataplane's report (None when nothing could be planned)."""
        with self._lock:
            started = time.monotonic()
            report: ApplyReport | None = None
            try:
                report = self._cycle()
            except DynamicASGsError as exc:
                self._log.error("cycle-failed", exc, {"kind": kind})
                error: str | None = str(exc)
            else:
                error = None if report.ok else "see failed"
            state = self._dataplane.state()
            result = CycleResult(
                kind=kind, seconds=time.monotonic() - started, finished_at=self._clock(), report=report, error=error,
                dataset_version=self.dataset_version, dataset_changed_at=self.dataset_changed_at, enforced=state,
                lagging=self._ledger.lagging(state, self.dataset_version))
            self._last_cycle = _last_cycle(result)
            self._publish(state)
            self._metrics.observe_cycle(result)
            return result

    def sync_container(self, handle: str) -> None:
        """Forced sync of one container (the CNI's call).

        Raises :class:`UnknownContainer`, :class:`EnforcementFailed` (with the reason) or the
        error that stopped it (the store, the policy server).
        """
        with self._lock:
            try:
                self._sync_container(handle)
            finally:
                self._publish()

    def cleanup_container(self, handle: str) -> None:
        """Remove the chains of every container no longer in the store (the CNI's DEL call).

        ``handle`` names the container the CNI is deleting; its chains go only once its
        store entry is gone (the CNI removes the entry first): a container still in the
        store is never unprotected by a cleanup call. Raises :class:`EnforcementFailed`
        when a family could not be swept.
        """
        with self._lock:
            try:
                self._cleanup(handle)
            finally:
                self._publish()

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
            report = self._apply("settle", lambda: self._dataplane.settle(plans), plans, partial=True)
            self._metrics.observe_call("settle", ok=report.ok)
            return report

    def next_look(self) -> float | None:
        """When (clock time) a waiting or watched container is next due a look."""
        with self._lock:
            return self._dataplane.next_look()

    def query(self) -> tuple[frozenset[str], str | None]:
        """The spaces and ETag of the current groups (for the blocking-query watcher)."""
        with self._lock:
            return self._spaces, self._etag

    def invalidate_kernel(self) -> None:
        """Make the next cycle read the kernel table again (to catch outside edits)."""
        with self._lock:
            self._dataplane.invalidate()

    def store_changed(self) -> bool:
        """Whether the container store changed since it was last read (cheap: a stat and a read)."""
        try:
            return self._view.store.signature() != self._view.signature
        except DynamicASGsError:
            return False

    def status(self) -> st.AgentStatus:
        """What ``/asg-status`` shows, as of the end of the last call: never waits for a running one.

        Each container's denied egress is that of the last counter read.
        """
        status = self._status
        if self._denials is None:
            return status
        counts = self._denials.counts()
        return dataclasses.replace(status, containers={
            h: dataclasses.replace(c, denied_packets=d.packets, denials_rose_at=_instant(d.rose_at))
            if (d := counts.get(h)) is not None else c for h, c in status.containers.items()})

    def containers(self) -> Mapping[str, Container]:
        """The store's containers as of the last published status (never changed afterwards)."""
        return self._containers

    # -- a cycle ---------------------------------------------------------------------------

    def _refresh_store(self) -> None:
        started = time.monotonic()
        self._view.refresh()
        self._metrics.observe_store_read(time.monotonic() - started, self._view.errors - self._store_errors)
        self._store_errors = max(self._store_errors, self._view.errors)

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
        self._metrics.observe_refused_spaces(len(self._refused.reasons()))

    def _fetch_groups(self, spaces: frozenset[str]) -> None:
        same = self._index is not None and spaces == self._spaces
        started = time.monotonic()
        try:
            result = self._policy.fetch(spaces, etag=self._etag if same else None)
        except UpstreamError as exc:
            self._metrics.observe_policy_request(time.monotonic() - started, failed=True)
            if self._policy_error != str(exc):
                self._log.error("policy-server-unavailable-keeping-rules", exc)
            self._policy_error = str(exc)
            raise
        self._metrics.observe_policy_request(time.monotonic() - started, failed=False)
        if self._policy_error is not None:
            self._log.info("policy-server-recovered")
        self._policy_error, self._policy_ok_at = None, self._clock()
        if result.dataset_version != self.dataset_version:
            self.dataset_changed_at = result.changed_at if result.changed_at is not None else self._clock()
        self.dataset_version = result.dataset_version
        if result.not_modified:
            return
        self._index = GroupIndex(result.groups)
        self._etag, self._spaces = result.etag, spaces
        self._log_dropped(result.dropped)
        self._log_invalid(result.groups)
        self._metrics.observe_groups(invalid_rules=sum(len(g.invalid_rules) for g in result.groups),
                                     dropped_groups=len(self._dropped_logged), version=self.dataset_version)

    def _log_dropped(self, dropped: Iterable[str]) -> None:
        current = set(dropped)
        for message in sorted(current - self._dropped_logged):
            self._log.error("security-group-dropped-invalid", message, {"effect": "the group grants nothing "
                                                                                   "(fail closed); the others apply"})
        self._dropped_logged = current

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
        index = self._index
        assert index is not None
        desired: dict[str, ContainerChains] = {}
        for handle, container in containers.items():
            plan = plan_container(container, index, self._settings)
            if plan is not None:
                desired[handle] = plan
        return self._apply("full", lambda: self._dataplane.apply(desired, complete=complete, keep=held), desired,
                           partial=not complete)

    def _sync_container(self, handle: str) -> None:
        self._refresh_store()
        container = self._view.containers.get(handle)
        if container is None:
            raise UnknownContainer(handle)
        if not container.policy_group_id or not container.space_id:
            return  # not an app container, or no space: no ASG chain (as silk)
        if self._index is None or container.space_id not in self._spaces:
            self._refresh_groups(self._spaces | {container.space_id})
        assert self._index is not None
        plan = plan_container(container, self._index, self._settings)
        assert plan is not None
        report = self._apply("forced", lambda: self._dataplane.apply_one(plan), {handle: plan}, partial=True)
        problem = report.refused.get(handle) or report.failed.get(handle) or report.skipped.get(handle)
        self._metrics.observe_call("forced", ok=not problem)
        if problem:
            raise EnforcementFailed(handle, problem)

    def _cleanup(self, handle: str) -> None:
        self._refresh_store()
        self._require_store()
        live = set(self._view.containers)
        if handle in live:
            self._log.info("cleanup-kept-live-container", {"handle": handle,
                                                            "reason": "still in the container metadata store"})
        started = time.monotonic()
        report = self._dataplane.remove_orphans(live)
        seconds = time.monotonic() - started
        self._ledger.keep_only(live)
        self._publish()
        self._metrics.observe_cleanup(seconds, report)
        self._learn_timing(report)
        if not report.ok:
            reasons = [f.error for f in report.families.values() if f.error]
            raise EnforcementFailed(handle, "; ".join(reasons) or "cleanup incomplete")

    # -- bookkeeping -----------------------------------------------------------------------

    def _apply(self, kind: str, call: Callable[[], ApplyReport], planned: Mapping[str, ContainerChains], *,
               partial: bool) -> ApplyReport:
        """Make one dataplane write; record it in the ledger, publish the status, observe it, announce its changes.

        The status is published first, so whoever sees one of this call's log lines or
        metrics and then asks ``/asg-status`` finds the change there.
        """
        started = time.monotonic()
        report = call()
        seconds = time.monotonic() - started
        self._ledger.record(report, planned, self.dataset_version, self._clock(), partial=partial)
        self._publish()
        self._metrics.observe_apply(kind, seconds, report)
        self._learn_timing(report)
        self._announce(report, planned)
        return report

    def _learn_timing(self, report: ApplyReport) -> None:
        """What paces verification: when chains were last written, what the last whole-table read cost."""
        if report.changes:
            self.last_write = time.monotonic()
        reads = [f.read_seconds for f in report.families.values() if f.read_seconds is not None]
        if reads:
            self.last_read_seconds = sum(reads)

    def _announce(self, report: ApplyReport, planned: Mapping[str, ContainerChains]) -> None:
        """Log every container whose rules changed; tell the app when it had rules before."""
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
            if container is not None and self._emitter is not None and handle in replaced:
                self._emitter.emit(container, APP_MESSAGE)
        if self._denials is not None:
            self._denials.rules_replaced(replaced, self._clock(), self.dataset_version)

    def _publish(self, state: Mapping[str, AppliedContainer] | None = None) -> None:
        """Replace the status snapshot (holding the lock: after every dataplane write and at the end of each call)."""
        self._status = self._snapshot(self._dataplane.state() if state is None else state)
        self._containers = self._view.containers  # a fresh dict per store read, never changed in place
        if self._on_publish is not None:
            self._on_publish()

    def _snapshot(self, state: Mapping[str, AppliedContainer]) -> st.AgentStatus:
        """The status as of now."""
        enforced = self._ledger.snapshot()
        containers: dict[str, st.ContainerStatus] = {}
        for handle, applied in sorted(state.items()):
            c = self._view.containers.get(handle)
            record = enforced.get(handle)
            containers[handle] = st.ContainerStatus(
                app_guid=c.app_guid if c else None, space_guid=c.space_id if c else None,
                workload=c.raw_workload if c else None,
                ruleset={f"ipv{v}": d for v, d in applied.digests.items()}, rule_count=applied.rule_count,
                applied_at=st.instant(applied.applied_at), verified_at=_instant(applied.verified_at),
                dataset_version=record.dataset_version if record else None,
                enforcing_since=_instant(record.since) if record else None)
        lagging = sum(1 for c in containers.values() if c.dataset_version != self.dataset_version)
        repair = self._ledger.last_repair
        return st.AgentStatus(
            dataset_version=self.dataset_version, dataset_changed_at=_instant(self.dataset_changed_at),
            containers=containers,
            totals=st.Totals(containers=len(containers), rules=sum(c.rule_count for c in containers.values()),
                             lagging=lagging, store_entries=len(self._view.containers),
                             invalid_store_entries=len(self._view.invalid)),
            last_cycle=self._last_cycle,
            drift=st.Drift(repaired=self._ledger.repaired,
                           last=st.DriftEvent(repair.handle, repair.reason, st.instant(repair.at)) if repair else None),
            settling=tuple(sorted(self._dataplane.looking())),
            policy_server=st.PolicyServerStatus(error=self._policy_error, last_success=_instant(self._policy_ok_at),
                                                refused_spaces=self._refused.reasons()),
            store=st.StoreStatus(error=self._view.last_error),
        )


def _last_cycle(result: CycleResult) -> st.LastCycle:
    report = result.report
    return st.LastCycle(
        kind=result.kind.value, finished_at=st.instant(result.finished_at), duration_seconds=round(result.seconds, 6),
        error=result.error, report=st.CycleSummary.from_json(report.summary()) if report else None,
        failed=dict(report.failed) if report else {}, skipped=dict(report.skipped) if report else {},
        refused=dict(report.refused) if report else {}, drifted=dict(report.drifted) if report else {})
