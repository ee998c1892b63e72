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
===========================================================  =====================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["AgentMetrics"]

_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LATENCY = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class AgentMetrics:
    """Every agent metric, in its own registry."""

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
