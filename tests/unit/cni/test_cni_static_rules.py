"""Garden's netOutRules -> rules -> the chains the agent's translation makes of them."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.model import ANY, Container, IPRange, PortRange, Protocol, Workload
from dynamic_asgs.asg.translate import ChainSettings, DenyNetworks
from dynamic_asgs.cni.static_rules import parse_net_out_rules, static_plan
from dynamic_asgs.errors import ConfigError


def rng(a: str, b: str) -> IPRange:
    return IPRange(ipaddress.ip_address(a), ipaddress.ip_address(b))


def test_every_protocol_translates() -> None:
    rules = parse_net_out_rules([
        {"protocol": 0, "networks": [{"start": "1.1.1.1", "end": "1.1.1.9"}]},
        {"protocol": 1, "networks": [{"start": "2.2.2.2", "end": "2.2.2.2"}], "ports": [{"start": 80, "end": 90}],
         "log": True},
        {"protocol": 2, "networks": [{"start": "3.3.3.3", "end": "3.3.3.3"}]},
        {"protocol": 3, "networks": [{"start": "4.4.4.4", "end": "4.4.4.4"}], "icmps": {"type": 8, "code": 0}},
        {"protocol": 3, "networks": [{"start": "4.4.4.4", "end": "4.4.4.4"}], "icmps": {"type": 3}},
    ])
    assert [r.protocol for r in rules] == [Protocol.ALL, Protocol.TCP, Protocol.UDP, Protocol.ICMP, Protocol.ICMP]
    assert rules[0].destinations == (rng("1.1.1.1", "1.1.1.9"),)
    assert rules[1].ports == (PortRange(80, 90),) and rules[1].log
    assert rules[2].ports == (PortRange(0, 65535),)  # no ports: every port, as Garden means it
    assert (rules[3].icmp_type, rules[3].icmp_code) == (8, 0)
    assert (rules[4].icmp_type, rules[4].icmp_code) == (3, ANY)
    assert parse_net_out_rules(None) == ()


@pytest.mark.parametrize(("raw", "message"), [
    ({"protocol": 9}, "netOutRules[0].protocol"),
    ({"protocol": 1, "networks": [{"start": "1.1.1.9", "end": "1.1.1.1"}]}, "start <= end"),
    ({"protocol": 1, "networks": [{"start": "x"}]}, "networks[0]"),
    ({"protocol": 1, "networks": [], "ports": [{"start": 90, "end": 80}]}, "is after end"),
    ({"protocol": 3, "networks": [{"start": "fd00::1", "end": "fd00::1"}]}, "icmp needs IPv4"),
    ({"protocol": 1, "log": "yes"}, "log: must be a boolean"),
    ("nope", "must be an object"),
])
def test_bad_rules_are_named(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_net_out_rules([raw])
    assert message in str(info.value)


def test_static_plan_is_the_agents_layout_for_any_container() -> None:
    rules = parse_net_out_rules([{"protocol": 1, "networks": [{"start": "2.2.2.2", "end": "2.2.2.2"}],
                                  "ports": [{"start": 443, "end": 443}]}])
    settings = ChainSettings(deny_networks=DenyNetworks(staging=(ipaddress.ip_network("10.0.0.0/8"),)))
    container = Container("h1", "10.255.0.2", "", "", Workload.STAGING)
    plan = static_plan(container, rules, settings)
    fam = plan.v4
    assert fam.parent.name == chains.netout_chain_name("h1")
    assert fam.parent.rules == (chains.jump(chains.asg_chain_name("h1")), chains.reject(4))
    assert chains.deny_network(ipaddress.ip_network("10.0.0.0/8")) in fam.asg.rules
    accept = chains.accept("tcp", rng("2.2.2.2", "2.2.2.2"), ports=PortRange(443, 443))
    assert accept in fam.asg.rules and fam.asg.rules[-1] == chains.reject(4)
    assert plan.v6 is None
