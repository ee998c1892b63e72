"""The agent loads silk's vxlan-policy-agent.json and names every bad key."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.agent.settings import load_settings
from dynamic_asgs.asg.translate import ChainLayout
from dynamic_asgs.errors import ConfigError

# What silk-release's job template renders (vxlan-policy-agent.json.erb), plus nothing of ours.
SILK = {
    "log_level": "info", "log_prefix": "cfnetworking", "iptables_c2c_logging": False, "iptables_asg_logging": True,
    "iptables_accepted_udp_logs_per_sec": 100, "poll_interval": 5, "enable_asg_syncing": True,
    "asg_poll_interval": 60, "iptables_denied_logs_per_sec": 1,
    "deny_networks": {"always": ["169.254.0.0/16"], "running": ["10.0.0.0/8"], "staging": []},
    "deny_networks_ipv6": {"always": ["fd00::/8"], "running": [], "staging": []},
    "outbound_connections": {"limit": True, "logging": False, "burst": 900, "rate_per_sec": 90},
    "enable_ipv6": False, "policy_server_url": "https://policy-server.service.cf.internal:4003",
    "metron_address": "127.0.0.1:3457", "underlay_ips": ["10.0.16.5"], "debug_server_port": 8721,
    "force_policy_poll_cycle_port": 8722, "enable_overlay_ingress_rules": False,
    "disable_container_network_policy": False, "overlay_network": ["10.255.0.0/16"],
    "ca_cert_file": "/var/vcap/jobs/vxlan-policy-agent/config/certs/ca.crt",
    "client_cert_file": "/var/vcap/jobs/vxlan-policy-agent/config/certs/client.crt",
    "client_key_file": "/var/vcap/jobs/vxlan-policy-agent/config/certs/client.key",
    "cni_datastore_path": "/var/vcap/data/container-metadata/store.json",
    "iptables_lock_file": "/var/vcap/data/garden-cni/iptables.lock", "debug_server_host": "127.0.0.1",
    "client_timeout_seconds": 5, "vni": 1, "force_policy_poll_cycle_host": "127.0.0.1",
    "loggregator": {"loggregator_use_v2_api": False},
}


def write(tmp: Path, conf: dict[str, Any]) -> Path:
    path = tmp / "vxlan-policy-agent.json"
    path.write_text(json.dumps(conf))
    return path


def test_a_silk_config_loads(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, SILK))
    assert s.source == "cfnetworking.vxlan-policy-agent"
    assert s.poll_interval == 60 and s.enable_asg_syncing and s.blocking_wait == 30
    assert s.chains.asg_logging and s.chains.conn_limit is not None and s.chains.conn_limit.burst == 900
    assert s.chains.deny_networks.always == (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert (s.debug_host, s.force_host, s.force_port) == ("127.0.0.1", "127.0.0.1", 8722)
    assert s.loggregator is None and s.commands[4] == ("iptables-restore", "iptables-save")
    assert s.chains.layout is ChainLayout.SHARED  # silk's configs have no layout: ours is the default


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"asg_poll_interval": 0}, "$.asg_poll_interval: 0 is less than the minimum of 1"),
        ({"asg_poll_intervall": 5}, "$: unknown key(s) 'asg_poll_intervall'"),
        ({"deny_networks": {"always": ["10.0.0.0/33"]}}, "$.deny_networks.always[0]: '10.0.0.0/33' is not a CIDR"),
        ({"deny_networks_ipv6": {"running": ["10.0.0.0/8"]}}, "$.deny_networks_ipv6.running[0]: '10.0.0.0/8' is not "
                                                              "an IPv6 CIDR"),
        ({"policy_server_url": "http://x:4003"}, "$.policy_server_url: 'http://x:4003' does not match"),
        ({"debug_server_host": "0.0.0.0"}, "$.debug_server_host: '0.0.0.0' is not one of"),
        ({"loggregator": {"loggregator_use_v2_api": True}}, "$.loggregator.loggregator_ca_path: is required"),
        ({"outbound_connections": {"limit": True, "rate_per_sec": 0}}, "$.outbound_connections.rate_per_sec: 0 is"),
        ({"asg_chain_layout": "flat"}, "$.asg_chain_layout: 'flat' is not one of ['shared', 'per-container']"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, {**SILK, **change}))
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "vxlan-policy-agent.json"))


def test_loggregator_v2(tmp_path: Path) -> None:
    conf = {**SILK, "loggregator": {"loggregator_use_v2_api": True, "loggregator_api_port": 3459,
                                    "loggregator_ca_path": "ca", "loggregator_cert_path": "c",
                                    "loggregator_key_path": "k", "loggregator_job_name": "diego-cell"}}
    s = load_settings(write(tmp_path, conf))
    assert s.loggregator is not None and s.loggregator.address == "127.0.0.1:3459"


def test_the_cell_identity_for_fleet_reports_defaults_its_name_and_refuses_bad_ids(tmp_path: Path) -> None:
    silk = load_settings(write(tmp_path, SILK))
    assert (silk.cell_id, silk.report_interval, silk.denied_check_interval) == ("", 60.0, 30.0)  # no id: no reports
    named = load_settings(write(tmp_path, {**SILK, "cell_id": "6a1e-4f2b", "report_interval_seconds": 15}))
    assert (named.cell_id, named.cell_name, named.report_interval) == ("6a1e-4f2b", "6a1e-4f2b", 15.0)
    for key, value in (("cell_id", "a b"), ("cell_name", "diego-cell/0\n"), ("report_interval_seconds", 1)):
        with pytest.raises(ConfigError, match=key):
            load_settings(write(tmp_path, {**SILK, key: value}))
