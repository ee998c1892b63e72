"""CC resources -> rows: CC's rules kept verbatim, structural faults refuse the whole listing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dynamic_asgs.errors import ValidationError
from dynamic_asgs.syncer.convert import rows_from_resources


def resource(guid: str = "g1", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "guid": guid, "name": f"asg-{guid}", "globally_enabled": {"running": False, "staging": True},
        "rules": [{"protocol": "icmp", "destination": "10.0.0.0/8", "type": 8, "code": -1, "description": "ping"}],
        "relationships": {"running_spaces": {"data": [{"guid": "s2"}, {"guid": "s1"}, {"guid": "s2"}]},
                          "staging_spaces": {"data": []}},
    }
    base.update(overrides)
    return base


def test_rows_keep_ccs_rules_and_sort_spaces() -> None:
    converted = rows_from_resources([resource()])
    row = converted.rows[0]
    assert json.loads(row.rules) == resource()["rules"]  # no keys added (the Go syncer added ports/log/...)
    assert row.running_spaces == ("s1", "s2") and row.staging_spaces == ()
    assert (row.staging_default, row.running_default) == (True, False)
    assert converted.invalid_rules == []


def test_invalid_rules_are_kept_and_reported() -> None:
    bad = resource(rules=[{"protocol": "tcp", "destination": "10.0.0.300", "ports": "443"},
                          {"protocol": "all", "destination": "10.1.0.0/16"}])
    converted = rows_from_resources([bad])
    assert len(json.loads(converted.rows[0].rules)) == 2
    assert [str(e) for e in converted.invalid_rules] == [
        "security group 'asg-g1' (g1): rules[0]: destination: '10.0.0.300' is not an IP address"]


@pytest.mark.parametrize(("resources", "message"), [
    ([resource(), resource(guid="")], "resources[1]: security group 'asg-' (): guid: must be a non-empty string"),
    ([resource(relationships={"running_spaces": {"data": [{"id": "x"}]}})],
     "relationships.running_spaces.data[0]: has no guid"),
    ([resource(rules={"protocol": "tcp"})], "rules: must be a list"),
    ([resource(), resource()], "security group g1 appears twice"),
])
def test_structural_faults_refuse_the_listing(resources: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        rows_from_resources(resources)
    assert message in str(info.value)
