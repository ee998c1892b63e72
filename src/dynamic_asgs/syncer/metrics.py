"""The syncer's Prometheus metrics, named after the Go syncer's (DESIGN.md §3.7).

==========================================================  ==========================================
Prometheus (this project)                                   Go (cf-networking policy-server-asg-syncer)
==========================================================  ==========================================
``security_groups_retrieval_from_cc_seconds`` (histogram)   ``SecurityGroupsRetrievalFromCCTime``
``security_groups_total_sync_seconds`` (histogram)          ``SecurityGroupsTotalSyncTime``
``security_groups_store_replace_seconds{result}``           ``SecurityGroupsStoreReplace{Success,Error}Time``
``security_groups_polls_total{outcome}``                    (new) unchanged / no_changes / changed / failed
``security_groups_sync_failing`` (gauge)                    (new) 1 once failures outlast the retry deadline
``security_groups_sync_failures_total{kind}``               (new) cc / refused / unstable / invalid / database /
                                                            lease / internal
``security_groups_sync_refusals_total{reason}``             (new) CC/UAA answers refused: redirect / response_size /
                                                            pages / paging / deadline
``security_groups_dropped`` (gauge)                         (new) groups of the last listing that cannot be stored
``security_groups_rows_written_total{op}``                  (new) insert / update / delete
``security_groups_stored`` / ``..._invalid_rules`` (gauges)  (new) groups stored, rules the cells will drop
``security_groups_dataset_version`` (gauge)                 (new)
``security_groups_last_sync_timestamp_seconds`` (gauge)     (new) last successful poll (synced or unchanged)
``security_groups_syncer_lease_held`` (gauge)               (new) 1 on the active syncer
``security_groups_cc_requests_total{endpoint,status}``      (new) every request to CC and UAA
==========================================================  ==========================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dynamic_asgs.errors import Refusal

__all__ = ["SyncerMetrics"]

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class SyncerMetrics:
    """All syncer metrics, in their own registry (so several syncers can live in one test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.retrieval = Histogram("security_groups_retrieval_from_cc_seconds",
                                   "Time to list every security group from Cloud Controller",
                                   buckets=_BUCKETS, registry=r)
        self.total = Histogram("security_groups_total_sync_seconds",
                               "Time of one sync that listed (listing, validation and store)",
                               buckets=_BUCKETS, registry=r)
        self.replace = Histogram("security_groups_store_replace_seconds",
                                 "Time of the store transaction", ["result"], buckets=_BUCKETS, registry=r)
        self.polls = Counter("security_groups_polls", "Polls by outcome", ["outcome"], registry=r)
        self.failing = Gauge("security_groups_sync_failing",
                             "1 while syncs have failed for longer than retry_deadline_seconds", registry=r)
        self.failures = Counter("security_groups_sync_failures", "Failed sync attempts by kind", ["kind"],
                                registry=r)
        self.refusals = Counter("security_groups_sync_refusals",
                                "Cloud Controller and UAA answers refused, by the bound they broke", ["reason"],
                                registry=r)
        for reason in Refusal:
            self.refusals.labels(reason=reason.value)
        self.dropped = Gauge("security_groups_dropped",
                             "Security groups of the last listing that cannot be stored (dropped; the others are)",
                             registry=r)
        self.rows = Counter("security_groups_rows_written", "Rows written by operation", ["op"], registry=r)
        self.stored = Gauge("security_groups_stored", "Security groups in the policy DB", registry=r)
        self.invalid_rules = Gauge("security_groups_invalid_rules",
                                   "Rules CC returned that fail validation (the cells drop them)", registry=r)
        self.version = Gauge("security_groups_dataset_version", "The policy DB's dataset version", registry=r)
        self.last_sync = Gauge("security_groups_last_sync_timestamp_seconds",
                               "When a poll last succeeded (unix time)", registry=r)
        self.lease_held = Gauge("security_groups_syncer_lease_held", "1 when this syncer is the active one",
                                registry=r)
        self.requests = Counter("security_groups_cc_requests", "Requests to Cloud Controller and UAA",
                                ["endpoint", "status"], registry=r)

    def observe_request(self, endpoint: str, status: str, _seconds: float) -> None:
        """Count one request (the JsonHttp observer)."""
        self.requests.labels(endpoint=endpoint, status=status).inc()
