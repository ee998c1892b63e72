"""The published store.json schema (docs/container-store.schema.json) says what the agent accepts.

Writers (our CNI, silk's cni-wrapper-plugin, an operator's tooling) are told by the schema
what an entry may hold. Over entries built from good and bad values for every field, the
schema and the agent's parser agree, apart from what a JSON Schema cannot say (the key
equals the handle, an address parses, ports stay under 65536, log_config holds JSON),
which the values here keep valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynamic_asgs.asg.parse import parse_container
from dynamic_asgs.errors import ValidationError
from dynamic_asgs.local import examples

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "docs" / "container-store.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

GOOD_IDS = ["32a7bfc2-699f-495b-51b6-3e18", "check-32a7bfc2-699f-495b-51b6-3e18", "a", "A_b.c-9", "x" * 128]
BAD_IDS = ["", "-leading", "trailing-newline\n", "has space", "semi;colon", "x" * 129, "tab\there", "quote'", 7, None,
           ["a"]]
GOOD_OPTIONAL = ["", None, *GOOD_IDS]
GOOD_IPS = ["10.255.0.7", "fd00::7", ""]
BAD_IPS = ["10.0.0.1 ", "fe80::1%eth0", 10, "10.0.0.1/24"]
GOOD_PORTS = ["", None, "8080", "8080,2222", "8080, 9090", " 1 , 2 "]
BAD_PORTS = ["8080;", "80-90", "a", 8080, ",80"]
GOOD_LOG = ["", None, json.dumps({"guid": "app-guid", "index": 0, "source_name": "CELL", "tags": {"app_name": "p"}})]
BAD_LOG = [7, {"guid": "x"}]


FIELDS: dict[str, tuple[list[Any], list[Any]]] = {
    "handle": (GOOD_IDS, BAD_IDS),
    "ip": (GOOD_IPS, BAD_IPS),
    "ipv6": (["", "fd00::9"], ["fd00::9%eth0", 6]),
    "policy_group_id": (GOOD_OPTIONAL, BAD_IDS[2:]),
    "space_id": (GOOD_OPTIONAL, BAD_IDS[2:]),
    "container_workload": (["", None, "app", "task", "staging", "windows", "w" * 64], ["x y", "w" * 65, 3]),
    "ports": (GOOD_PORTS, BAD_PORTS),
    "log_config": (GOOD_LOG, BAD_LOG),
    "metadata": ([None], ["text", [], 5]),
}


@st.composite
def entries(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """An entry with good values everywhere except, usually, one field; fields left out at random."""
    bad = draw(st.sampled_from([None, *FIELDS]))
    value = {name: draw(st.sampled_from(FIELDS[name][name == bad])) for name in FIELDS}
    entry: dict[str, Any] = {"handle": value["handle"], "ip": value["ip"]}
    if draw(st.booleans()) or bad == "ipv6":
        entry["ipv6"] = value["ipv6"]
    metadata = {k: value[k] for k in ("policy_group_id", "space_id", "container_workload", "ports", "log_config")
                if k == bad or draw(st.integers(0, 3))}
    if bad == "metadata":
        entry["metadata"] = value["metadata"]
    elif draw(st.integers(0, 5)):
        entry["metadata"] = metadata
    return (value["handle"] if isinstance(value["handle"], str) else "k"), entry


def accepted_by_agent(key: str, entry: dict[str, Any]) -> bool:
    try:
        parse_container(entry, handle=key)
    except ValidationError:
        return False
    return True


BOUNDARY = {"handle": "x" * 128, "ip": "fd00::7", "ipv6": "fd00::9",
            "metadata": {"policy_group_id": None, "space_id": "", "container_workload": "w" * 64,
                         "ports": " 8080, 2222", "log_config": GOOD_LOG[2]}}


@settings(max_examples=400)
@given(entries())
@example(("x" * 128, BOUNDARY))
@example(("x" * 128, {**BOUNDARY, "metadata": {**BOUNDARY["metadata"], "container_workload": "w" * 65}}))
@example(("x" * 129, {**BOUNDARY, "handle": "x" * 129}))
def test_the_schema_accepts_exactly_the_entries_the_agent_accepts(pair: tuple[str, dict[str, Any]]) -> None:
    key, entry = pair
    assert VALIDATOR.is_valid({key: entry}) == accepted_by_agent(key, entry), entry


def test_the_example_entry_and_an_empty_store_are_valid() -> None:
    example = json.loads(examples.CONTAINER.read_text())
    VALIDATOR.validate({example["handle"]: example})
    VALIDATOR.validate({})
    assert accepted_by_agent(example["handle"], example)
