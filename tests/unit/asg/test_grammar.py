"""The grammar of container values: every real Garden, Diego and CC value passes, nothing that could inject does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamic_asgs.asg import grammar
from dynamic_asgs.asg.parse import parse_container
from dynamic_asgs.errors import ValidationError

REAL_HANDLES = [
    "5fa0c0de-1111-4e2f-9aaa-0123456789ab",  # a task or staging container (CC GUID)
    "32a7bfc2-699f-495b-51b6-3e18",  # a Diego LRP instance guid
    "check-32a7bfc2-699f-495b-51b6-3e18",  # a health-check container
    "a6e5b8d2c1f04a0e9b3c7d8e1f2a3b4c",  # a GUID without dashes
    "app-instance_1.0",  # what the CNI spec also allows: '_' and '.'
    "h",
]
HOSTILE = [
    "x" * 20 + "\n-A FORWARD -j ACCEPT", "abc\r\n", "abc\x00", "abc\tdef", "abc def", 'abc"', "abc'", "abc\\",
    "abc#", "-abc", ".abc", "_abc", "abc/../../etc", "abc;rm", "abc,def", "abc%eth0", "ábc", "abc\u2028",
    "x" * 129, "", " ",
]


@pytest.mark.parametrize("value", REAL_HANDLES)
def test_real_handles_and_guids_pass(value: str) -> None:
    assert grammar.handle(value) == value and grammar.guid(value) == value


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_handles_and_guids_are_refused_with_the_reason(value: str) -> None:
    with pytest.raises(ValueError) as info:
        grammar.handle(value)
    assert "\n" not in str(info.value)  # the message shows the value escaped, cut to 60 characters
    if value:
        with pytest.raises(ValueError):
            grammar.guid(value)


@given(st.text(max_size=200))
def test_a_handle_that_passes_holds_only_the_cni_specs_characters(value: str) -> None:
    try:
        grammar.handle(value)
    except ValueError:
        return
    assert value[0].isascii() and value[0].isalnum() and len(value) <= grammar.MAX_HANDLE
    assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in value)


@pytest.mark.parametrize(("value", "version"), [("10.255.0.7", None), ("fd00::7", None), ("fd00::7", 6),
                                                ("::ffff:10.0.0.1", 6), ("", None)])
def test_addresses_pass(value: str, version: int | None) -> None:
    assert grammar.ip(value, version=version) == value


@pytest.mark.parametrize(("value", "version"), [
    ("fe80::1%eth0", None), ("fe80::1%\n-A FORWARD", None), ("10.0.0.1\n", None), ("10.0.0.1 ", None),
    ("10.0.0.1/32", None), ("10.0.0.999", None), ("010.0.0.1", None), ("10.0.0.1", 6), (7, None),
])
def test_addresses_with_zones_spaces_or_the_wrong_family_are_refused(value: Any, version: int | None) -> None:
    with pytest.raises(ValueError):
        grammar.ip(value, version=version)


@pytest.mark.parametrize("value", ["8080", "8080,2222", "8080, 9090", " 8181 , 9090", "", None])
def test_ports_as_garden_writes_them(value: str | None) -> None:
    assert grammar.ports(value) == (value or "")


@pytest.mark.parametrize("value", ["8080\n", "80;81", "70000", "a", "8080,,9090", "8080\t", 8080])
def test_ports_that_are_not_a_port_list_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        grammar.ports(value)


def test_workloads_of_diego_pass_and_anything_odd_is_refused() -> None:
    assert [grammar.workload(w) for w in ("app", "task", "staging", "sidecar", "", None)] == [
        "app", "task", "staging", "sidecar", "", ""]
    for bad in ("app\n", "app task", "a" * 65, 1):
        with pytest.raises(ValueError):
            grammar.workload(bad)


def test_log_config_as_diego_writes_it() -> None:
    text = json.dumps({"guid": "5fa0c0de-1111-4e2f-9aaa-0123456789ab", "index": 3, "source_name": "APP/PROC/WEB",
                       "tags": {"app_name": "my app ✓", "space_name": "dev", "organization_name": "acme"}})
    config = grammar.log_config(text)
    assert (config.guid, config.index, config.source_name) == ("5fa0c0de-1111-4e2f-9aaa-0123456789ab", "3",
                                                               "APP/PROC/WEB")
    assert dict(config.tags)["app_name"] == "my app ✓"
    assert grammar.log_config("") == grammar.log_config(None) == grammar.LogConfig()


@pytest.mark.parametrize("value", [
    "{oops", "[]", "null", json.dumps({"guid": "a\nb"}), json.dumps({"index": -1}), json.dumps({"index": "0"}),
    json.dumps({"index": True}), json.dumps({"source_name": "CELL\n"}), json.dumps({"tags": {"a": 1}}),
    json.dumps({"tags": {"a": "b\nc"}}), json.dumps({"tags": {str(i): "x" for i in range(65)}}),
    "[" * 100_000 + "]" * 100_000, '{"index": 1' + "0" * 5000 + "}", "x" * (grammar.MAX_LOG_CONFIG + 1),
    '{"index": NaN}', 7,
])
def test_log_config_outside_its_grammar_is_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        grammar.log_config(value)


def entry(**fields: Any) -> dict[str, Any]:
    metadata = {"policy_group_id": "app-1", "space_id": "space-1", "container_workload": "app", "ports": "8080"}
    out: dict[str, Any] = {"handle": "h1", "ip": "10.255.0.2", "metadata": metadata}
    for key, value in fields.items():
        if key in (*metadata, "log_config"):
            metadata[key] = value
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(("fields", "field"), [
    ({"handle": "h1\n-A FORWARD -j ACCEPT"}, "handle"),
    ({"ip": "10.255.0.2\n"}, "ip"),
    ({"ipv6": "fe80::1%\n"}, "ipv6"),
    ({"ipv6": "10.0.0.1"}, "ipv6"),
    ({"policy_group_id": "app\n"}, "metadata.policy_group_id"),
    ({"space_id": "s1,s2"}, "metadata.space_id"),
    ({"container_workload": "app\n*nat"}, "metadata.container_workload"),
    ({"ports": "80\n"}, "metadata.ports"),
    ({"log_config": '{"guid": "x y"}'}, "metadata.log_config"),
])
def test_a_store_entry_with_one_value_outside_its_grammar_is_refused_whole(fields: dict[str, Any],
                                                                            field: str) -> None:
    raw = entry(**fields)
    with pytest.raises(ValidationError, match=rf"container .*: {field}: "):
        parse_container(raw, handle=raw["handle"])


def test_an_entry_stored_under_another_key_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"container 'h2': handle: 'h1' differs from the entry's key"):
        parse_container(entry(), handle="h2")
    with pytest.raises(ValidationError, match="differs from the entry's key"):
        parse_container({k: v for k, v in entry().items() if k != "handle"}, handle="h1")
    assert parse_container(entry(), handle="h1").handle == "h1"
