"""Typed builders of the daemons' JSON configuration files (local environment and tests).

Each daemon's configuration is one frozen dataclass whose :meth:`to_json` returns the
document the daemon's ``--config-file`` reads (the daemons validate it against their
``config_schema.json``). Keys a caller needs beyond the typed fields go in ``extra``,
which is applied last, so a test can override any key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamic_asgs.local.pki import Issued

__all__ = [
    "AgentConfig",
    "CCEndpoints",
    "CniConfig",
    "NetmonConfig",
    "PolicyServerConfig",
    "PtpConfig",
    "SyncerConfig",
    "write_config",
]

JsonObject = dict[str, Any]


def write_config(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``doc`` as a configuration file readable by its owner only; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class CCEndpoints:
    """Where the syncer finds Cloud Controller and UAA, and the credentials it uses."""

    url: str
    internal_url: str
    ca_cert: str
    client_cert: str
    client_key: str
    client_id: str = "network-policy"
    client_secret: str = "network-policy-secret"


@dataclass(frozen=True)
class SyncerConfig:
    """``policy-server-asg-syncer``'s configuration."""

    database: Mapping[str, Any]
    cc: CCEndpoints
    uuid: str | None = None
    poll_interval_seconds: int | None = None
    metrics_port: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        """The configuration document."""
        cc = self.cc
        doc: JsonObject = {
            "database": dict(self.database), "uaa_client": cc.client_id, "uaa_client_secret": cc.client_secret,
            "uaa_url": cc.url, "uaa_ca": cc.ca_cert, "cc_url": cc.url, "cc_ca_cert": cc.ca_cert,
            "cc_internal_url": cc.internal_url, "cc_internal_ca_cert": cc.ca_cert,
            "cc_internal_client_cert": cc.client_cert, "cc_internal_client_key": cc.client_key,
            "metrics_port": self.metrics_port,
        }
        if self.poll_interval_seconds is not None:
            doc["asg_poll_interval_seconds"] = self.poll_interval_seconds
        if self.uuid is not None:
            doc["uuid"] = self.uuid
        return {**doc, **self.extra}


@dataclass(frozen=True)
class PolicyServerConfig:
    """``policy-server``'s configuration: mutual TLS on 127.0.0.1, health and metrics beside."""

    database: Mapping[str, Any]
    server: Issued
    port: int
    health_port: int
    metrics_port: int = 0
    workers: int = 2
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        """The configuration document."""
        return {
            "database": dict(self.database), "listen_host": "127.0.0.1", "internal_listen_port": self.port,
            "health_check_port": self.health_port, "metrics_port": self.metrics_port, "workers": self.workers,
            "ca_cert_file": str(self.server.ca), "server_cert_file": str(self.server.cert),
            "server_key_file": str(self.server.key), **self.extra,
        }


@dataclass(frozen=True)
class AgentConfig:
    """``vxlan-policy-agent``'s configuration; ``tools`` are its iptables command keys (see harness)."""

    policy_server_url: str
    client: Issued
    store: Path
    lock_file: Path
    force_port: int
    debug_port: int
    metrics_port: int
    underlay_ips: tuple[str, ...]
    poll_interval: int = 5
    tools: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        """The configuration document."""
        return {
            "policy_server_url": self.policy_server_url, "ca_cert_file": str(self.client.ca),
            "client_cert_file": str(self.client.cert), "client_key_file": str(self.client.key),
            "cni_datastore_path": str(self.store), "iptables_lock_file": str(self.lock_file),
            "asg_poll_interval": self.poll_interval, "force_policy_poll_cycle_port": self.force_port,
            "debug_server_port": self.debug_port, "metrics_port": self.metrics_port,
            "underlay_ips": list(self.underlay_ips), **self.tools, **self.extra,
        }


@dataclass(frozen=True)
class NetmonConfig:
    """``netmon``'s configuration (it runs inside the cell namespace, so its tools are the plain ones)."""

    interface: str
    metrics_port: int
    lock_file: Path
    backend: str
    poll_interval: int = 5

    def to_json(self) -> JsonObject:
        """The configuration document."""
        return {"poll_interval": self.poll_interval, "interface_name": self.interface,
                "metrics_port": self.metrics_port, "iptables_lock_file": str(self.lock_file),
                "iptables_save_command": f"iptables-{self.backend}-save",
                "ip6tables_save_command": f"ip6tables-{self.backend}-save"}


@dataclass(frozen=True)
class CniConfig:
    """``dynamic-asgs-cni``'s configuration, as a runtime builds it from the conflist."""

    network: str
    store: Path
    lock_file: Path
    agent_address: str
    underlay_interfaces: tuple[str, ...]
    tools: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        """The configuration document."""
        return {"cniVersion": "1.0.0", "name": self.network, "type": "dynamic-asgs-cni",
                "policy_agent_force_poll_address": self.agent_address, "datastore": str(self.store),
                "iptables_lock_file": str(self.lock_file), "underlay_interface_names": list(self.underlay_interfaces),
                **self.tools, **self.extra}


@dataclass(frozen=True)
class PtpConfig:
    """The reference ``ptp`` plugin with ``host-local`` IPAM: the main plugin of the chain."""

    network: str
    subnet: str
    ipam_dir: Path

    def to_json(self) -> JsonObject:
        """The configuration document."""
        return {"cniVersion": "1.0.0", "name": self.network, "type": "ptp", "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.ipam_dir)}}
