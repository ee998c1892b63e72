"""The policy server's configuration: the Go job's JSON keys in, typed settings out.

:func:`load_settings` validates the file against ``config_schema.json`` (with the shared
``database`` object); a bad or unknown key is named in the error and the daemon exits 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dynamic_asgs.config import load_config
from dynamic_asgs.policydb.db import DatabaseSettings, daemon_schema

__all__ = ["RequestLimits", "ServerSettings", "load_settings"]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one connection or client may make a worker hold (issue 13); every bound is per worker.

    ``head_timeout`` counts from a request's first byte (or from the connection, for the
    first request); ``body_timeout`` from the end of the head.
    """

    max_head_bytes: int = 65536
    max_headers: int = 100
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    max_blocking_queries: int = 10000
    max_blocking_queries_per_client: int = 4


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the policy server needs, validated."""

    source: str
    listen_host: str
    port: int
    health_port: int
    ca_cert_file: str
    server_cert_file: str
    server_key_file: str
    database: DatabaseSettings
    max_open_connections: int
    connections_max_lifetime: int  # seconds; -1: never recycle
    workers: int
    check_interval: float
    metrics_port: int
    log_level: str
    log_prefix: str
    limits: RequestLimits = RequestLimits()
    silent_after_intervals: int = 3
    report_flush_interval: float = 1.0  # seconds; 0: one transaction per report
    forget_silent_cells_after: float = 7 * 24 * 3600.0  # seconds

    @property
    def pool_size(self) -> int:
        """DB connections per worker: the version check or a reload, the fleet routes' writes and one fleet view."""
        return max(1, min(3, self.max_open_connections // self.workers))


def load_settings(path: str | Path) -> ServerSettings:
    """Read and validate the policy server's JSON configuration file."""
    source = str(path)
    raw = load_config(path, daemon_schema("dynamic_asgs.policy_server", "config_schema.json"))
    return ServerSettings(
        source=source,
        listen_host=raw["listen_host"],
        port=raw["internal_listen_port"],
        health_port=raw["health_check_port"],
        ca_cert_file=raw["ca_cert_file"],
        server_cert_file=raw["server_cert_file"],
        server_key_file=raw["server_key_file"],
        database=DatabaseSettings.from_config(raw["database"], source=source),
        max_open_connections=raw["max_open_connections"],
        connections_max_lifetime=lifetime if (lifetime := raw["connections_max_lifetime_seconds"]) > 0 else -1,
        workers=raw["workers"],
        check_interval=raw["dataset_check_interval_ms"] / 1000,
        metrics_port=raw["metrics_port"],
        log_level=raw["log_level"],
        log_prefix=raw["log_prefix"],
        limits=RequestLimits(
            max_head_bytes=raw["max_request_head_bytes"],
            max_headers=raw["max_request_headers"],
            head_timeout=float(raw["request_head_timeout_seconds"]),
            body_timeout=float(raw["request_body_timeout_seconds"]),
            max_blocking_queries=raw["max_blocking_queries"],
            max_blocking_queries_per_client=raw["max_blocking_queries_per_client"],
        ),
        silent_after_intervals=raw["silent_after_intervals"],
        report_flush_interval=raw["report_flush_interval_ms"] / 1000,
        forget_silent_cells_after=raw["forget_silent_cells_after_hours"] * 3600.0,
    )
