"""The syncer's configuration: the Go job's JSON keys in, typed settings out.

:func:`load_settings` validates the file against ``config_schema.json`` (with the shared
``database`` object); a bad or unknown key is named in the error and the daemon exits 2.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dynamic_asgs.config import load_config
from dynamic_asgs.errors import ConfigError
from dynamic_asgs.policydb.db import DatabaseSettings, daemon_schema

__all__ = ["SyncerSettings", "load_settings"]


@dataclass(frozen=True, slots=True)
class SyncerSettings:
    """Everything the syncer daemon needs, validated."""

    source: str
    holder: str
    database: DatabaseSettings
    uaa_client: str
    uaa_client_secret: str
    uaa_url: str
    uaa_ca: str
    cc_url: str
    cc_ca_cert: str
    cc_internal_url: str
    cc_internal_ca_cert: str
    cc_internal_client_cert: str
    cc_internal_client_key: str
    skip_ssl_validation: bool
    poll_interval: float
    retry_deadline: float
    lease_ttl: float
    page_size: int
    listing_attempts: int
    max_pages: int
    max_response_bytes: int
    listing_deadline: float
    connect_timeout: float
    request_timeout: float
    metrics_port: int
    log_level: str
    log_prefix: str


def _with_port(url: str, port: int) -> str:
    url = url.rstrip("/")
    return url if urlsplit(url).port is not None else f"{url}:{port}"


def load_settings(path: str | Path) -> SyncerSettings:
    """Read and validate the syncer's JSON configuration file."""
    source = str(path)
    raw = load_config(path, daemon_schema("dynamic_asgs.syncer", "config_schema.json"))
    if bool(raw["cc_internal_client_cert"]) != bool(raw["cc_internal_client_key"]):
        raise ConfigError(f"{source}: $.cc_internal_client_cert: needs cc_internal_client_key (and vice versa)")
    return SyncerSettings(
        source=source,
        holder=raw["uuid"] or f"{socket.gethostname()}-{os.getpid()}",
        database=DatabaseSettings.from_config(raw["database"], source=source),
        uaa_client=raw["uaa_client"],
        uaa_client_secret=raw["uaa_client_secret"],
        uaa_url=_with_port(raw["uaa_url"], raw["uaa_port"]),
        uaa_ca=raw["uaa_ca"],
        cc_url=raw["cc_url"].rstrip("/"),
        cc_ca_cert=raw["cc_ca_cert"],
        cc_internal_url=raw["cc_internal_url"].rstrip("/"),
        cc_internal_ca_cert=raw["cc_internal_ca_cert"],
        cc_internal_client_cert=raw["cc_internal_client_cert"],
        cc_internal_client_key=raw["cc_internal_client_key"],
        skip_ssl_validation=raw["skip_ssl_validation"],
        poll_interval=float(raw["asg_poll_interval_seconds"]),
        retry_deadline=float(raw["retry_deadline_seconds"]),
        lease_ttl=float(raw["lease_ttl_seconds"]),
        page_size=raw["cc_page_size"],
        listing_attempts=raw["cc_listing_attempts"],
        max_pages=raw["cc_max_pages"],
        max_response_bytes=raw["cc_max_response_bytes"],
        listing_deadline=float(raw["cc_listing_deadline_seconds"]),
        connect_timeout=float(raw["connect_timeout_seconds"]),
        request_timeout=float(raw["request_timeout_seconds"]),
        metrics_port=raw["metrics_port"],
        log_level=raw["log_level"],
        log_prefix=raw["log_prefix"],
    )
