"""The /asg-status document's type: timestamps, refusals naming the path, unknown keys ignored."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from dynamic_asgs.agent.status import (
    AgentStatus,
    ContainerStatus,
    Drift,
    PolicyServerStatus,
    StoreStatus,
    Totals,
    format_instant,
    instant,
    parse_instant,
)
from dynamic_asgs.errors import DocumentError


def document() -> dict[str, Any]:
    at = instant(1_700_000_000.5)
    a = ContainerStatus(app_guid="app-a", space_guid="s1", workload="app", ruleset={"ipv4": "d4", "ipv6": "d6"},
                        rule_count=2, applied_at=at, verified_at=None, dataset_version=3, enforcing_since=at)
    return AgentStatus(dataset_version=3, dataset_changed_at=at, containers={"a": a},
                       totals=Totals(containers=1, rules=2, lagging=0, store_entries=1, invalid_store_entries=0),
                       last_cycle=None, drift=Drift(repaired=0, last=None), settling=(),
                       policy_server=PolicyServerStatus(error=None, last_success=at, refused_spaces={}),
                       store=StoreStatus(error=None)).to_json()


@pytest.mark.parametrize("ts", [0.0, 1_700_000_000.0, 1_700_000_000.0009, 1_700_000_000.999, 1_733_456_789.123456])
def test_timestamps_are_written_as_the_agent_always_wrote_them_and_read_back_exactly(ts: float) -> None:
    legacy = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
    assert format_instant(instant(ts)) == legacy
    assert format_instant(parse_instant(legacy)) == legacy


def test_a_document_round_trips_and_unknown_keys_are_ignored() -> None:
    doc = document()
    assert AgentStatus.from_json(doc).to_json() == doc
    newer = {**json.loads(json.dumps(doc)), "fleet": {"cell": "diego-cell/0"}}
    newer["containers"]["a"]["extra"] = 1
    assert AgentStatus.from_json(newer).to_json() == doc


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("totals"), r"^totals: missing$"),
    (lambda d: d["containers"]["a"].update(rule_count=True), r"^containers\.a\.rule_count: expected an integer"),
    (lambda d: d["containers"]["a"].update(applied_at="2023-11-14 22:13:20"), r"^containers\.a\.applied_at: "),
    (lambda d: d["policy_server"]["refused_spaces"].update(s1=4), r"^policy_server\.refused_spaces\.s1: "),
    (lambda d: d.update(settling="a"), r"^settling: expected a list of strings"),
    (lambda d: d.update(last_cycle={"kind": "full"}), r"^last_cycle\.\w+: missing$"),
    (lambda d: d.update(containers=[]), r"^not an /asg-status document"),
])
def test_a_bad_document_is_refused_naming_the_path(edit: Any, message: str) -> None:
    doc = json.loads(json.dumps(document()))
    edit(doc)
    with pytest.raises(DocumentError, match=message):
        AgentStatus.from_json(doc)


def test_a_disabled_agents_document_is_not_a_status() -> None:
    with pytest.raises(DocumentError, match="not an /asg-status document"):
        AgentStatus.from_json({"enable_asg_syncing": False})
