"""Rule and group validation as Cloud Controller validates (DESIGN.md §3.2)."""

from __future__ import annotations

import json

import pytest

from dynamic_asgs.asg.model import ANY, PortRange, Protocol, Workload
from dynamic_asgs.asg.parse import (
    MAX_DESTINATIONS,
    parse_cc_group,
    parse_container,
    parse_destinations,
    parse_groups_document,
    parse_internal_group,
    parse_ports,
    parse_rule,
)
from dynamic_asgs.errors import RuleError, ValidationError


def rule(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"protocol": "tcp", "destination": "10.0.0.1", "ports": "80"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def ranges(text: str) -> list[str]:
    return [str(r) for r in parse_destinations(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", ["10.0.0.1-10.0.0.1"]),
        ("10.0.0.0/24", ["10.0.0.0-10.0.0.255"]),
        ("10.0.0.7/24", ["10.0.0.0-10.0.0.255"]),
        ("10.0.0.1-10.0.1.10", ["10.0.0.1-10.0.1.10"]),
        ("0.0.0.0/0", ["0.0.0.0-255.255.255.255"]),
        ("1.1.1.1,2.2.2.0/31,3.3.3.3-3.3.3.4", ["1.1.1.1-1.1.1.1", "2.2.2.0-2.2.2.1", "3.3.3.3-3.3.3.4"]),
        ("2001:db8::1", ["2001:db8::1-2001:db8::1"]),
        ("2001:db8::/126", ["2001:db8::-2001:db8::3"]),
        ("::1-::5", ["::1-::5"]),
    ],
)
def test_destinations_parse_to_inclusive_ranges(text: str, expected: list[str]) -> None:
    assert ranges(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is required"),
        ("10.0.0.1, 10.0.0.2", "whitespace"),
        ("10.0.0.1,", "empty element"),
        (",10.0.0.1", "empty element"),
        ("010.0.0.1", "not an IP address"),
        ("10.0.0.256", "not an IP address"),
        ("10.0.0.2-10.0.0.1", "starts after it ends"),
        ("10.0.0.1-::1", "mixes IPv4 and IPv6"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("10.0.0.0/", "invalid prefix length"),
        ("10.0.0.0/024", "invalid prefix length"),
        ("fe80::1%eth0", "zone ids"),
        ("example.com", "not an IP address"),
    ],
)
def test_bad_destinations_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_destinations(text)


def test_destination_list_limit_is_ccs_6000() -> None:
    ok = ",".join(f"10.{i // 256 % 256}.{i % 256}.1" for i in range(MAX_DESTINATIONS))
    assert len(parse_destinations(ok)) == MAX_DESTINATIONS
    with pytest.raises(ValueError, match="at most 6000"):
        parse_destinations(ok + ",10.99.99.99")


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ("80", [(80, 80)]),
        ("80,443", [(80, 80), (443, 443)]),
        ("80, 443", [(80, 80), (443, 443)]),
        ("1000-2000", [(1000, 2000)]),
        ("1000 -2000, 8080, 3000 - 4000, 443 ", [(1000, 2000), (8080, 8080), (3000, 4000), (443, 443)]),
        (8080, [(8080, 8080)]),
        ("65535", [(65535, 65535)]),
    ],
)
def test_ports_accept_ccs_forms_and_the_agents_mixes(ports: object, expected: list[tuple[int, int]]) -> None:
    assert parse_ports(ports) == tuple(PortRange(a, b) for a, b in expected)


@pytest.mark.parametrize(
    ("ports", "reason"),
    [
        ("", "required"),
        ("0", "outside 1-65535"),
        ("65536", "outside 1-65535"),
        ("80,,443", "empty element"),
        ("http", "not a port number"),
        ("-80", "not a port number"),
        ("2000-1000", "starts after it ends"),
        ("\uff11\uff12", "not a port number"),  # full-width digits
        (True, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_bad_ports_are_refused(ports: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_ports(ports)


def test_rule_error_names_group_index_field_and_reason() -> None:
    with pytest.raises(RuleError) as info:
        parse_rule(rule(destination="10.0.0.300"), group="'db' (g-1)", index=3)
    err = info.value
    assert (err.group, err.index, err.field) == ("'db' (g-1)", 3, "destination")
    assert str(err) == "security group 'db' (g-1): rules[3]: destination: '10.0.0.300' is not an IP address"


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (rule(protocol="sctp"), "protocol", "not one of"),
        (rule(protocol=None), "protocol", "not one of"),
        (rule(ports=None), "ports", "must be a string"),
        (rule(protocol="all", ports="80"), "ports", "must not be given"),
        (rule(protocol="icmp", ports="80", type=0, code=0), "ports", "must not be given"),
        (rule(protocol="icmp", ports=None, code=0), "type", "required"),
        (rule(protocol="icmp", ports=None, type=0, code=256), "code", "outside -1..255"),
        (rule(protocol="icmp", ports=None, type=-2, code=0), "type", "outside -1..255"),
        (rule(protocol="icmp", ports=None, type="8", code=0), "type", "must be an integer"),
        (rule(protocol="icmp", ports=None, type=True, code=0), "type", "must be an integer"),
        (rule(protocol="icmp", ports=None, type=8, code=0, destination="::1"), "destination", "IPv4"),
        (rule(protocol="icmpv6", ports=None, type=128, code=0), "destination", "IPv6"),
        (rule(log="yes"), "log", "true or false"),
        (rule(description=5), "description", "must be a string"),
    ],
)
def test_invalid_rules_name_the_field(raw: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(RuleError, match=reason) as info:
        parse_rule(raw, group="g", index=0)
    assert info.value.field == field


def test_rule_not_an_object() -> None:
    with pytest.raises(RuleError, match="rules\\[2\\]: rule: must be an object"):
        parse_rule(["tcp"], group="g", index=2)


def test_icmp_minus_one_is_stored_as_255_any() -> None:
    r = parse_rule(rule(protocol="icmp", ports="", type=-1, code=-1), group="g", index=0)
    assert (r.icmp_type, r.icmp_code) == (ANY, ANY)


def test_internal_api_form_with_zero_type_code_on_tcp_is_fine() -> None:
    r = parse_rule(rule(type=0, code=0, log=False, description=""), group="g", index=0)
    assert r.protocol is Protocol.TCP and r.icmp_type is None and r.ports == (PortRange(80, 80),)


CC_GROUP = {
    "guid": "g-1",
    "name": "db",
    "globally_enabled": {"running": True, "staging": False},
    "rules": [
        {"protocol": "tcp", "destination": "10.0.0.0/24", "ports": "5432"},
        {"protocol": "tcp", "destination": "10.0.0.300", "ports": "5432"},
        {"protocol": "icmp", "destination": "10.0.0.0/24", "type": 8, "code": 0},
    ],
    "relationships": {
        "running_spaces": {"data": [{"guid": "s1"}, {"guid": "s2"}]},
        "staging_spaces": {"data": []},
    },
}


def test_cc_group_keeps_valid_rules_and_reports_the_invalid_one() -> None:
    group = parse_cc_group(CC_GROUP)
    assert group.guid == "g-1" and group.running_default and not group.staging_default
    assert group.running_spaces == ("s1", "s2") and group.staging_spaces == ()
    assert [r.protocol for r in group.rules] == [Protocol.TCP, Protocol.ICMP]
    assert len(group.invalid_rules) == 1
    assert str(group.invalid_rules[0]).startswith("security group 'db' (g-1): rules[1]: destination:")


def test_cc_relationship_without_guid_fails_the_group() -> None:
    bad = json.loads(json.dumps(CC_GROUP))
    bad["relationships"]["running_spaces"]["data"].append({"id": "x"})
    with pytest.raises(ValidationError, match=r"relationships.running_spaces.data\[2\]: has no guid"):
        parse_cc_group(bad)


def test_internal_entry_rules_are_a_json_string() -> None:
    entry = {
        "guid": "g-2",
        "name": "web",
        "rules": json.dumps([{"protocol": "all", "destination": "0.0.0.0-9.255.255.255", "ports": "",
                              "type": 0, "code": 0, "description": "", "log": False}]),
        "staging_default": True,
        "running_default": False,
        "staging_space_guids": [],
        "running_space_guids": ["s1"],
    }
    group = parse_internal_group(entry)
    assert group.staging_default and group.running_spaces == ("s1",)
    assert [str(d) for d in group.rules[0].destinations] == ["0.0.0.0-9.255.255.255"]
    assert group.rules[0].protocol is Protocol.ALL and group.rules[0].ports == ()


def test_internal_entry_with_unparsable_rules_fails_the_group() -> None:
    with pytest.raises(ValidationError, match="rules: not a JSON array"):
        parse_internal_group({"guid": "g", "name": "n", "rules": "[{"})


def test_document_kind_is_detected() -> None:
    assert [g.guid for g in parse_groups_document({"resources": [CC_GROUP]})] == ["g-1"]
    assert parse_groups_document({"next": 0, "security_groups": []}) == []
    with pytest.raises(ValidationError, match="not a security groups document"):
        parse_groups_document({"foo": 1})


def test_container_entry() -> None:
    c = parse_container({
        "handle": "h-1",
        "ip": "10.255.0.2",
        "metadata": {
            "policy_group_id": "app-1", "space_id": "s1", "container_workload": "task",
            "log_config": json.dumps({"guid": "app-1", "index": 0, "source_name": "CELL",
                                      "tags": {"app_name": "a"}}),
        },
    })
    assert c.workload is Workload.TASK and c.workload.is_running
    assert (c.app_guid, c.log_source, c.log_tags) == ("app-1", "CELL", (("app_name", "a"),))


def test_container_with_unknown_workload_gets_no_asg_and_a_bad_log_config_refuses_the_entry() -> None:
    c = parse_container({"handle": "h", "ip": "10.0.0.1",
                         "metadata": {"policy_group_id": "a", "space_id": "s", "container_workload": "sidecar"}})
    assert c.workload is Workload.OTHER and c.raw_workload == "sidecar" and c.log_source == ""
    with pytest.raises(ValidationError, match=r"container 'h': metadata.log_config: is not JSON"):
        parse_container({"handle": "h", "ip": "10.0.0.1", "metadata": {"policy_group_id": "a", "log_config": "{oops"}})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"ip": "10.0.0.1"}, "handle"),
        ({"handle": "h", "ip": "10.0.0.999"}, "not an IP address"),
        ({"handle": "h", "ip": "10.0.0.1", "metadata": []}, "metadata: must be an object"),
        ({"handle": "h", "ip": "10.0.0.1", "metadata": {"space_id": 3}}, "metadata.space_id"),
    ],
)
def test_bad_container_entries(raw: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        parse_container(raw)
