"""CC resources -> rows: CC's rules kept verbatim, a group that cannot be stored dropped alone."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamic_asgs.errors import ValidationError
from dynamic_asgs.syncer.convert import MAX_NAME, rows_from_resources


def resource(guid: Any = "g1", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "guid": guid, "name": f"asg-{guid}", "globally_enabled": {"running": False, "staging": True},
        "rules": [{"protocol": "icmp", "destination": "10.0.0.0/8", "type": 8, "code": -1, "description": "ping"}],
        "relationships": {"running_spaces": {"data": [{"guid": "s2"}, {"guid": "s1"}, {"guid": "s2"}]},
                          "staging_spaces": {"data": []}},
    }
    base.update(overrides)
    return base


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_rows_keep_ccs_rules_and_sort_spaces() -> None:
    converted = rows_from_resources([resource()])
    row = converted.rows[0]
    assert json.loads(row.rules) == resource()["rules"]  # no keys added (the Go syncer added ports/log/...)
    assert row.running_spaces == ("s1", "s2") and row.staging_spaces == ()
    assert (row.staging_default, row.running_default) == (True, False)
    assert converted.invalid_rules == [] and converted.dropped == []


def test_invalid_rules_are_kept_and_reported() -> None:
    bad = resource(rules=[{"protocol": "tcp", "destination": "10.0.0.300", "ports": "443"},
                          {"protocol": "all", "destination": "10.1.0.0/16"}])
    converted = rows_from_resources([bad])
    assert len(json.loads(converted.rows[0].rules)) == 2
    assert [str(e) for e in converted.invalid_rules] == [
        "security group 'asg-g1' (g1): rules[0]: destination: '10.0.0.300' is not an IP address"]


def test_unicode_that_databases_store_is_kept() -> None:
    converted = rows_from_resources([resource(name="dns \u00fcber \U0001f680", rules=[
        {"protocol": "all", "destination": "10.0.0.0/8", "description": "\u2603 \U0001f600"}])])
    assert converted.rows[0].name == "dns \u00fcber \U0001f680" and "\U0001f600" in converted.rows[0].rules


BAD: dict[str, tuple[Any, str]] = {
    "not-an-object": (42, "must be an object, not int"),
    "missing-key": ({k: v for k, v in resource("g-x").items() if k != "relationships"}, "lacks relationships"),
    "empty-guid": (resource(""), "guid: must be a non-empty string"),
    "guid-number": (resource(123), "guid: must be a non-empty string"),
    "guid-comma": (resource("g,2"), "guid: not a valid guid"),
    "guid-newline": (resource("g-3\n"), "guid: not a valid guid"),
    "guid-too-long": (resource("g" * 256), "guid: not a valid guid"),
    "space-without-guid": (resource("g-4", relationships={"running_spaces": {"data": [{"id": "x"}]}}),
                           "relationships.running_spaces.data[0]: has no guid"),
    "space-guid-space": (resource("g-5", relationships={"staging_spaces": {"data": [{"guid": "s 1"}]}}),
                         "space guid 's 1': not a valid guid"),
    "rules-not-a-list": (resource("g-6", rules={"protocol": "tcp"}), "rules: must be a list"),
    "enabled-not-an-object": (resource("g-7", globally_enabled="yes"), "globally_enabled: must be an object"),
    "lone-high-surrogate": (resource("g-8", name="\ud800"), "name: not encodable as UTF-8 (surrogates not allowed)"),
    "lone-low-surrogate-in-rules": (resource("g-9", rules=[{"protocol": "all", "destination": "10.0.0.1",
                                                            "description": "x\udc00"}]), "rules: not encodable"),
    "name-too-long": (resource("g-10", name="n" * (MAX_NAME + 1)), f"name: {MAX_NAME + 1} characters"),
    "name-with-nul": (resource("g-11", name="a\x00b"), "name: holds control characters"),
    "name-a-list": (resource("g-12", name=["a"]), "name: must be a non-empty string"),
    "nested-too-deeply": (resource("g-13", rules=[{"protocol": nested(100_000)}]), "nested too deeply"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_group_that_cannot_be_stored_is_dropped_alone(case: str) -> None:
    bad, reason = BAD[case]
    converted = rows_from_resources([resource("g-a"), bad, resource("g-b")])
    assert [row.guid for row in converted.rows] == ["g-a", "g-b"]
    assert len(converted.dropped) == 1 and converted.dropped[0].startswith("resources[1]: ")
    assert reason in converted.dropped[0]
    assert len(converted.dropped[0]) <= 300


def test_every_bad_group_is_dropped_and_every_good_one_kept() -> None:
    resources = [resource(f"good-{i}") for i in range(3)] + [bad for bad, _ in BAD.values()]
    converted = rows_from_resources(resources)
    assert len(converted.rows) == 3 and len(converted.dropped) == len(BAD)


def test_a_guid_listed_twice_refuses_the_listing() -> None:
    with pytest.raises(ValidationError, match="security group g1 appears twice"):
        rows_from_resources([resource(), resource()])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                   max_size=3), max_leaves=10)
KEYS = st.sampled_from(["guid", "name", "rules", "globally_enabled", "relationships"])
GUID = re.compile(r"[A-Za-z0-9._:~-]{1,255}")


@given(st.dictionaries(KEYS, JSON | st.text(), max_size=5), st.sets(KEYS, max_size=2))
def test_any_resource_is_stored_faithfully_or_dropped(changes: dict[str, Any], removed: set[str]) -> None:
    odd = {k: v for k, v in {**resource("candidate"), **changes}.items() if k not in removed}
    if odd.get("guid") == "kept":
        return
    converted = rows_from_resources([resource("kept"), odd])
    assert len(converted.rows) + len(converted.dropped) == 2 and converted.rows[0].guid == "kept"
    for row in converted.rows:
        assert GUID.fullmatch(row.guid) and all(GUID.fullmatch(s) for s in row.running_spaces + row.staging_spaces)
        assert len(row.name) <= MAX_NAME
        row.name.encode("utf-8")
        row.rules.encode("utf-8")
    if len(converted.rows) == 2:
        assert json.loads(converted.rows[1].rules) == (odd["rules"] or [])
