"""The agent's configuration: silk's JSON keys in, typed settings out.

:func:`load_settings` validates the file against ``config_schema.json`` (unknown or
bad keys are named in the error, and the daemon exits 2), then checks what a schema
cannot: every deny network is a CIDR of the right family, and the loggregator
certificate paths are present when the v2 API is on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamic_asgs.asg.translate import ChainLayout, ChainSettings, ConnLimit, DenyNetworks
from dynamic_asgs.config import load_config, load_schema
from dynamic_asgs.errors import ConfigError

__all__ = ["AgentSettings", "LoggregatorSettings", "deny_networks_from", "load_settings"]


@dataclass(frozen=True, slots=True)
class LoggregatorSettings:
    """Where app-visible log lines go (the cell's loggregator agent, v2 gRPC, mTLS)."""

    address: str
    ca_file: str
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything the agent daemon needs, validated."""

    source: str
    enable_asg_syncing: bool
    poll_interval: float
    blocking_wait: int
    store_path: Path
    store_check_interval: float
    policy_server_url: str
    ca_cert_file: str
    client_cert_file: str
    client_key_file: str
    client_timeout: float
    lock_file: Path
    lock_timeout: float
    commands: dict[int, tuple[str, str]]  # family -> (restore, save)
    enable_ipv6: bool
    debug_host: str
    debug_port: int
    force_host: str
    force_port: int
    metrics_port: int
    log_level: str
    log_prefix: str
    chains: ChainSettings
    loggregator: LoggregatorSettings | None
    settle_seconds: float = 10.0
    watch_seconds: float = 60.0
    verify_interval: float = 60.0
    fingerprint_file: Path | None = None
    cell_id: str = ""
    cell_name: str = ""
    report_interval: float = 60.0
    denied_check_interval: float = 30.0
    denied_window: float = 600.0


def deny_networks_from(raw: dict[str, Any], key: str, version: int, source: str) -> DenyNetworks:
    """The deny networks under ``raw[key]`` (always/running/staging), each a CIDR of IP ``version``."""
    kinds: dict[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]] = {}
    for kind in ("always", "running", "staging"):
        nets = []
        for i, text in enumerate(raw[key][kind]):
            where = f"{source}: $.{key}.{kind}[{i}]"
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ConfigError(f"{where}: {text!r} is not a CIDR") from None
            if net.version != version:
                raise ConfigError(f"{where}: {text!r} is not an IPv{version} CIDR")
            nets.append(net)
        kinds[kind] = tuple(nets)
    return DenyNetworks(**kinds)


def _merge(a: DenyNetworks, b: DenyNetworks) -> DenyNetworks:
    return DenyNetworks(a.always + b.always, a.running + b.running, a.staging + b.staging)


def _loggregator(raw: dict[str, Any], source: str) -> LoggregatorSettings | None:
    conf = raw["loggregator"]
    if not conf.get("loggregator_use_v2_api"):
        return None
    paths = {}
    for key in ("loggregator_ca_path", "loggregator_cert_path", "loggregator_key_path"):
        if not conf.get(key):
            raise ConfigError(f"{source}: $.loggregator.{key}: is required when loggregator_use_v2_api is true")
        paths[key] = conf[key]
    return LoggregatorSettings(
        address=f"127.0.0.1:{conf['loggregator_api_port']}",
        ca_file=paths["loggregator_ca_path"],
        cert_file=paths["loggregator_cert_path"],
        key_file=paths["loggregator_key_path"],
    )


def load_settings(path: str | Path) -> AgentSettings:
    """Load and validate the agent's JSON configuration file."""
    source = str(path)
    raw = load_config(path, load_schema("dynamic_asgs.agent", "config_schema.json"))
    out = raw["outbound_connections"]
    limit = ConnLimit(out["rate_per_sec"], out["burst"], out["logging"]) if out["limit"] else None
    chains = ChainSettings(
        deny_networks=_merge(deny_networks_from(raw, "deny_networks", 4, source),
                             deny_networks_from(raw, "deny_networks_ipv6", 6, source)),
        asg_logging=raw["iptables_asg_logging"],
        denied_logs_per_sec=raw["iptables_denied_logs_per_sec"],
        accepted_udp_logs_per_sec=raw["iptables_accepted_udp_logs_per_sec"],
        conn_limit=limit,
        layout=ChainLayout(raw["asg_chain_layout"]),
    )
    return AgentSettings(
        source=f"{raw['log_prefix']}.vxlan-policy-agent" if raw["log_prefix"] else "vxlan-policy-agent",
        enable_asg_syncing=raw["enable_asg_syncing"],
        poll_interval=float(raw["asg_poll_interval"]),
        blocking_wait=raw["asg_blocking_wait"],
        store_path=Path(raw["cni_datastore_path"]),
        store_check_interval=raw["store_check_interval_ms"] / 1000,
        policy_server_url=raw["policy_server_url"].rstrip("/"),
        ca_cert_file=raw["ca_cert_file"],
        client_cert_file=raw["client_cert_file"],
        client_key_file=raw["client_key_file"],
        client_timeout=float(raw["client_timeout_seconds"]),
        lock_file=Path(raw["iptables_lock_file"]),
        lock_timeout=float(raw["iptables_lock_timeout_seconds"]),
        commands={4: (raw["iptables_restore_command"], raw["iptables_save_command"]),
                  6: (raw["ip6tables_restore_command"], raw["ip6tables_save_command"])},
        enable_ipv6=raw["enable_ipv6"],
        debug_host=raw["debug_server_host"],
        debug_port=raw["debug_server_port"],
        force_host=raw["force_policy_poll_cycle_host"],
        force_port=raw["force_policy_poll_cycle_port"],
        metrics_port=raw["metrics_port"],
        log_level=raw["log_level"],
        log_prefix=raw["log_prefix"],
        chains=chains,
        loggregator=_loggregator(raw, source),
        settle_seconds=float(raw["new_container_settle_seconds"]),
        watch_seconds=float(raw["new_container_watch_seconds"]),
        verify_interval=float(raw["kernel_verify_interval_seconds"]),
        fingerprint_file=Path(raw["fingerprint_file"]) if raw["fingerprint_file"] else None,
        cell_id=raw["cell_id"],
        cell_name=raw["cell_name"] or raw["cell_id"],
        report_interval=float(raw["report_interval_seconds"]),
        denied_check_interval=float(raw["denied_egress_check_interval_seconds"]),
        denied_window=float(raw["denied_egress_window_seconds"]),
    )
