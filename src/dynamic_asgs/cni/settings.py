"""The CNI plugin's network configuration: silk's cni-wrapper keys in, typed settings out.

The runtime hands the whole configuration on stdin at every call; :func:`load_settings`
validates it against ``config_schema.json`` (through :mod:`dynamic_asgs.config`, the
one home of config validation) and builds the same :class:`ChainSettings` the agent
uses, so static rules and the agent's rules come out of one translation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from dynamic_asgs.agent.settings import deny_networks_from
from dynamic_asgs.asg.translate import ChainSettings, ConnLimit
from dynamic_asgs.config import load_schema, validate_config
from dynamic_asgs.errors import ConfigError

__all__ = ["CniSettings", "load_settings", "request_metadata"]

SOURCE = "network configuration"


@dataclass(frozen=True, slots=True)
class CniSettings:
    """Everything the plugin needs from its configuration, validated."""

    store_path: Path
    lock_file: Path
    lock_timeout: float
    commands: dict[int, tuple[str, str]]  # family -> (restore, save)
    enable_ipv6: bool
    agent_address: str
    agent_timeout: float
    underlay_interfaces: tuple[str, ...]
    chains: ChainSettings

    @property
    def versions(self) -> tuple[int, ...]:
        """The IP families whose tables hold the container's chains."""
        return (4, 6) if self.enable_ipv6 else (4,)


@cache
def _schema() -> dict[str, Any]:
    return load_schema("dynamic_asgs.cni", "config_schema.json")


def load_settings(raw: Mapping[str, Any]) -> CniSettings:
    """Validate the network configuration (defaults filled in); ConfigError names the bad key."""
    conf = validate_config(dict(raw), _schema(), source=SOURCE)
    interfaces = tuple(dict.fromkeys([*conf["underlay_interface_names"],
                                      *conf.get("temporary_underlay_interface_names", [])]))
    if not interfaces:
        raise ConfigError(f"{SOURCE}: $.underlay_interface_names: at least one underlay interface is required "
                          "(the FORWARD hook sends the container's egress through its netout chain)")
    out = conf["outbound_connections"]
    limit = ConnLimit(out["rate_per_sec"], out["burst"], out["logging"]) if out["limit"] else None
    chains = ChainSettings(
        deny_networks=deny_networks_from(conf, "deny_networks", 4, SOURCE),
        asg_logging=conf["iptables_asg_logging"],
        denied_logs_per_sec=conf["iptables_denied_logs_per_sec"],
        accepted_udp_logs_per_sec=conf["iptables_accepted_udp_logs_per_sec"],
        conn_limit=limit,
    )
    return CniSettings(
        store_path=Path(conf["datastore"]),
        lock_file=Path(conf["iptables_lock_file"]),
        lock_timeout=float(conf["iptables_lock_timeout_seconds"]),
        commands={4: (conf["iptables_restore_command"], conf["iptables_save_command"]),
                  6: (conf["ip6tables_restore_command"], conf["ip6tables_save_command"])},
        enable_ipv6=conf["enable_ipv6"],
        agent_address=conf["policy_agent_force_poll_address"],
        agent_timeout=float(conf["policy_agent_timeout_seconds"]),
        underlay_interfaces=interfaces,
        chains=chains,
    )


def request_metadata(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The container's metadata: top-level ``metadata`` (Garden's), else ``runtimeConfig.metadata``."""
    for source in (raw, raw.get("runtimeConfig")):
        if isinstance(source, Mapping) and isinstance(source.get("metadata"), Mapping):
            return dict(source["metadata"])
    return {}
