"""The agent's Prometheus metrics, named after the Go agent's (DESIGN.md §3.7).

===========================================================  =====================================
Prometheus (this project)                                    Go (silk vxlan-policy-agent)
===========================================================  =====================================
``asg_iptables_enforce_seconds{kind}`` (histogram)           ``asgIptablesEnforceTime``
``asg_iptables_cleanup_seconds`` (histogram)                 ``asgIptablesCleanupTime``
``asg_total_poll_seconds{kind}`` (histogram)                 ``asgTotalPollTime``
``container_metadata_seconds`` (histogram)                   ``containerMetadataTime``
``policy_server_asg_poll_seconds`` (histogram)               ``policyServerASGPollTime``
``asg_cycles_total{kind,result}``                            (new) full / forced / cleanup; ok / error
``asg_restores_total{family}`` / ``..._failures_total``       (new) kernel commits and refused payloads
``asg_payload_lines_total{family}``                          (new) restore lines written
``asg_iptables_lock_wait_seconds_total{family}``             (new) restores waiting for the lock file
``asg_containers{state}`` (gauge)                            (new) enforced / skipped / failed / refused
``asg_chain_drift_repaired_total``                           (new) containers whose chains were edited
                                                             behind the agent's back, then rewritten
``asg_container_rules`` (gauge)                              (new) accept rules enforced on the cell
``asg_container_updates_total``                              (new) containers whose rules changed
``asg_dataset_version`` (gauge)                              (new) policy-server dataset enforced
``asg_containers_lagging`` (gauge)                           (new) containers behind that version
``asg_sync_latency_seconds`` (histogram)                     (new) dataset change -> enforced on cell
``asg_policy_server_errors_total``                           (new) failed policy-server requests
``asg_invalid_rules`` (gauge)                                (new) rules dropped by validation
``asg_invalid_security_groups`` (gauge)                      (new) groups of the last answer that could not
                                                             be parsed at all (each grants nothing)
``asg_refused_spaces`` (gauge)                               (new) spaces the policy server refuses (set aside)
``asg_store_errors_total``                                   (new) unreadable container store reads
``asg_last_cycle_timestamp_seconds`` (gauge)                 (new) last successful full cycle
``asg_denied_egress_packets_total``                          (new) packets the containers' final REJECT
                                                             refused (read every denied-egress interval)
``asg_denials_rose_total``                                   (new) containers whose denials rose after
                                                             their rules changed (each told to its app)
``asg_denied_egress_read_failures_total``                    (new) failed reads of the REJECT counters
``asg_fleet_reports_total{result}``                          (new) status reports to the policy server;
                                                             sent / failed
===========================================================  =====================================

The converger hands each result to one ``observe_*`` method here; no other module sets a metric.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dynamic_asgs.agent.dataplane.report import ApplyReport
from dynamic_asgs.agent.results import CycleResult

__all__ = ["AgentMetrics"]

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LATENCY = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class AgentMetrics:
    """Every agent metric, in its own registry, and the methods that observe the converger's results."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.enforce = Histogram("asg_iptables_enforce_seconds", "Time to bring iptables to the desired chains",
                                 ["kind"], buckets=_BUCKETS, registry=r)
        self.cleanup = Histogram("asg_iptables_cleanup_seconds", "Time of a forced orphan cleanup",
                                 buckets=_BUCKETS, registry=r)
        self.total = Histogram("asg_total_poll_seconds", "Time of a whole cycle (store, policy server, iptables)",
                               ["kind"], buckets=_BUCKETS, registry=r)
        self.metadata = Histogram("container_metadata_seconds", "Time to read the container metadata store",
                                  buckets=_BUCKETS, registry=r)
        self.policy_poll = Histogram("policy_server_asg_poll_seconds", "Time of a policy-server request",
                                     buckets=_BUCKETS, registry=r)
        self.cycles = Counter("asg_cycles", "Cycles by kind and result", ["kind", "result"], registry=r)
        self.restores = Counter("asg_restores", "iptables-restore commits", ["family"], registry=r)
        self.restore_failures = Counter("asg_restore_failures", "Refused iptables-restore payloads", ["family"],
                                        registry=r)
        self.lock_wait = Counter("asg_iptables_lock_wait_seconds", "Time restores waited for the iptables lock file "
                                 "(held by the CNI or netmon)", ["family"], registry=r)
        self.payload_lines = Counter("asg_payload_lines", "iptables-restore lines written", ["family"], registry=r)
        self.containers = Gauge("asg_containers", "Containers with ASG chains by state", ["state"], registry=r)
        self.rules = Gauge("asg_container_rules", "Accept rules enforced on the cell", registry=r)
        self.updates = Counter("asg_container_updates", "Containers whose rules changed", registry=r)
        self.version = Gauge("asg_dataset_version", "Policy-server dataset version this cell enforces", registry=r)
        self.lagging = Gauge("asg_containers_lagging", "Containers not yet enforcing the current dataset version",
                             registry=r)
        self.latency = Histogram("asg_sync_latency_seconds", "From a dataset change at the policy server to its "
                                 "enforcement on this cell", buckets=_LATENCY, registry=r)
        self.policy_errors = Counter("asg_policy_server_errors", "Failed policy-server requests", registry=r)
        self.invalid_rules = Gauge("asg_invalid_rules", "Rules dropped by validation (fail closed)", registry=r)
        self.dropped_groups = Gauge("asg_invalid_security_groups", "Security groups of the last policy-server "
                                    "answer that could not be parsed (each grants nothing)", registry=r)
        self.refused_spaces = Gauge("asg_refused_spaces", "Spaces the policy server refuses; their containers keep "
                                    "their current rules", registry=r)
        self.store_errors = Counter("asg_store_errors", "Unreadable container metadata store reads", registry=r)
        self.drift = Counter("asg_chain_drift_repaired", "Containers whose chains were found edited in place "
                             "(fingerprint or content changed) and rewritten", registry=r)
        self.last_cycle = Gauge("asg_last_cycle_timestamp_seconds", "When a full cycle last succeeded (unix time)",
                                registry=r)
        self.denied = Counter("asg_denied_egress_packets", "Packets the containers' final REJECT refused (denied "
                              "egress)", registry=r)
        self.denials_rose = Counter("asg_denials_rose", "Containers whose denied egress rose after their rules "
                                    "changed", registry=r)
        self.denied_read_failures = Counter("asg_denied_egress_read_failures", "Failed reads of the final REJECT "
                                            "counters", registry=r)
        self.reports = Counter("asg_fleet_reports", "Status reports sent to the policy server", ["result"],
                               registry=r)
        self._latency_version: int | None = None

    def observe_store_read(self, seconds: float, new_errors: int) -> None:
        """A read of the container metadata store, and how many unreadable reads it added."""
        self.metadata.observe(seconds)
        if new_errors > 0:
            self.store_errors.inc(new_errors)

    def observe_policy_request(self, seconds: float, *, failed: bool) -> None:
        """One request for the groups."""
        self.policy_poll.observe(seconds)
        if failed:
            self.policy_errors.inc()

    def observe_groups(self, *, invalid_rules: int, dropped_groups: int, version: int | None) -> None:
        """A policy-server answer with new groups."""
        self.dropped_groups.set(dropped_groups)
        self.invalid_rules.set(invalid_rules)
        if version is not None:
            self.version.set(version)

    def observe_refused_spaces(self, count: int) -> None:
        """How many spaces the policy server refuses now."""
        self.refused_spaces.set(count)

    def observe_apply(self, kind: str, seconds: float, report: ApplyReport) -> None:
        """A dataplane write (``full``, ``forced`` or ``settle``): its time, restores, updates and drift repaired."""
        self.enforce.labels(kind=kind).observe(seconds)
        self._families(report)
        self.updates.inc(len(report.changed))
        self.drift.inc(len(report.drifted))

    def observe_cleanup(self, seconds: float, report: ApplyReport) -> None:
        """An orphan cleanup (the CNI's DEL call)."""
        self.cleanup.observe(seconds)
        self._families(report)
        self.cycles.labels(kind="cleanup", result="ok" if report.ok else "error").inc()

    def observe_call(self, kind: str, *, ok: bool) -> None:
        """The outcome of a forced sync or a settle pass."""
        self.cycles.labels(kind=kind, result="ok" if ok else "error").inc()

    def observe_crash(self, kind: str) -> None:
        """A step of the loop that failed unexpectedly (logged with its traceback by the loop)."""
        self.cycles.labels(kind=kind, result="crash").inc()

    def observe_cycle(self, result: CycleResult) -> None:
        """A full cycle: its time and outcome, what the cell enforces after it, and the sync latency."""
        self.total.labels(kind=result.kind).observe(result.seconds)
        self.cycles.labels(kind=result.kind, result="ok" if result.ok else "error").inc()
        self.lagging.set(result.lagging)
        self.rules.set(sum(a.rule_count for a in result.enforced.values()))
        report = result.report
        if report is not None:
            self.containers.labels(state="enforced").set(len(result.enforced))
            self.containers.labels(state="skipped").set(len(report.skipped))
            self.containers.labels(state="failed").set(len(report.failed))
            self.containers.labels(state="refused").set(len(report.refused))
            if report.ok and result.lagging == 0:
                self._observe_latency(result)
        if result.ok:
            self.last_cycle.set(result.finished_at)

    def observe_denials(self, *, added: int, rose: int, failed: bool = False) -> None:
        """One read of the REJECT counters: packets refused since the last, containers told, or a failed read."""
        if failed:
            self.denied_read_failures.inc()
            return
        self.denied.inc(added)
        self.denials_rose.inc(rose)

    def observe_report(self, *, sent: bool) -> None:
        """One status report to the policy server."""
        self.reports.labels(result="sent" if sent else "failed").inc()

    def _families(self, report: ApplyReport) -> None:
        for version, fam in report.families.items():
            family = str(version)
            self.restores.labels(family=family).inc(fam.commits)
            self.restore_failures.labels(family=family).inc(fam.restores - fam.commits)
            self.payload_lines.labels(family=family).inc(fam.payload_lines)
            self.lock_wait.labels(family=family).inc(fam.lock_wait_seconds)

    def _observe_latency(self, result: CycleResult) -> None:
        """Once per dataset version that changed while we ran: change -> enforced on every container."""
        version = result.dataset_version
        if version is None or version == self._latency_version:
            return
        if self._latency_version is not None and result.dataset_changed_at is not None:
            self.latency.observe(max(0.0, result.finished_at - result.dataset_changed_at))
        self._latency_version = version
