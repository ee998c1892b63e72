"""CNI environment/stdin parsing, prevResult addresses, and the network configuration."""

from __future__ import annotations

from typing import Any

import pytest

from dynamic_asgs.cni.protocol import (
    CniError,
    Code,
    container_addresses,
    decode_config,
    read_invocation,
    request_version,
)
from dynamic_asgs.cni.settings import load_settings, request_metadata
from dynamic_asgs.errors import ConfigError

BASE: dict[str, Any] = {"cniVersion": "1.0.0", "name": "n", "type": "dynamic-asgs-cni",
                        "policy_agent_force_poll_address": "127.0.0.1:8722", "underlay_interface_names": ["eth0"]}


def test_invocation_needs_the_variables_of_its_command() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "h", "CNI_NETNS": "/n", "CNI_IFNAME": "eth0"}
    assert read_invocation(env).container_id == "h"
    assert read_invocation({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert read_invocation({**env, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).command == "DEL"
    with pytest.raises(CniError) as info:
        read_invocation({**env, "CNI_NETNS": ""})
    assert info.value.code is Code.INVALID_ENVIRONMENT and info.value.details == "CNI_NETNS"
    with pytest.raises(CniError, match="CNI_COMMAND"):
        read_invocation({"CNI_COMMAND": "GC"})


@pytest.mark.parametrize("data", [b"", b"[]", b"\xff", b"{", b"null", b'"x"'])
def test_stdin_must_be_a_json_object(data: bytes) -> None:
    with pytest.raises(CniError) as info:
        decode_config(data)
    assert info.value.code is Code.DECODE_FAILURE


def test_versions() -> None:
    assert request_version({"cniVersion": "0.4.0"}) == "0.4.0"
    for bad in ("2.0.0", 1, None):
        with pytest.raises(CniError) as info:
            request_version({"cniVersion": bad})
        assert info.value.code is Code.INCOMPATIBLE_VERSION
    assert CniError(Code.CHECK_FAILED, "m", "d").document("0.4.0") == {
        "cniVersion": "0.4.0", "code": 103, "msg": "m", "details": "d"}


def test_addresses_prefer_the_sandbox_interface() -> None:
    prev = {"interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.0.0.1/24", "interface": 0}, {"address": "10.0.0.2/24", "interface": 1},
                    {"address": "fd00::2/64", "interface": 1}]}
    got = container_addresses(prev)
    assert (got.ipv4, got.ipv6) == ("10.0.0.2", "fd00::2")
    assert container_addresses({"ips": [{"address": "10.1.0.5/16"}]}).ipv4 == "10.1.0.5"


@pytest.mark.parametrize("prev", [None, {}, {"ips": "x"}, {"ips": [{}]}, {"ips": [{"address": "nope"}]},
                                  {"ips": [{"address": "fd00::1/64"}]}])
def test_bad_prev_results_are_invalid_config(prev: Any) -> None:
    with pytest.raises(CniError) as info:
        container_addresses(prev)
    assert info.value.code is Code.INVALID_CONFIG


def test_settings_defaults_and_chain_settings() -> None:
    s = load_settings({**BASE, "temporary_underlay_interface_names": ["eth1", "eth0"],
                       "deny_networks": {"always": ["10.0.0.0/8"]}, "iptables_asg_logging": True,
                       "outbound_connections": {"limit": True}})
    assert s.underlay_interfaces == ("eth0", "eth1")
    assert str(s.store_path) == "/var/vcap/data/container-metadata/store.json"
    assert s.commands[4] == ("iptables-restore", "iptables-save") and s.versions == (4,)
    assert [str(n) for n in s.chains.deny_networks.always] == ["10.0.0.0/8"]
    assert s.chains.asg_logging and s.chains.conn_limit is not None and s.chains.conn_limit.rate_per_sec == 100
    assert load_settings({**BASE, "enable_ipv6": True}).versions == (4, 6)


@pytest.mark.parametrize(("change", "message"), [
    ({"policy_agent_force_poll_address": "http://x"}, "$.policy_agent_force_poll_address"),
    ({"underlay_interface_names": []}, "at least one underlay interface"),
    ({"deny_networks": {"always": ["nope"]}}, "'nope' is not a CIDR"),
    ({"iptables_asg_logging": "yes"}, "$.iptables_asg_logging"),
])
def test_bad_settings_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, **change})
    assert message in str(info.value)


def test_metadata_comes_from_garden_or_the_runtime_config() -> None:
    assert request_metadata({"metadata": {"a": "1"}, "runtimeConfig": {"metadata": {"b": "2"}}}) == {"a": "1"}
    assert request_metadata({"runtimeConfig": {"metadata": {"b": "2"}}}) == {"b": "2"}
    assert request_metadata({"metadata": None}) == {}
