"""The cell report's direct check accepts only what its JSON Schema accepts, and every report an agent sends."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from test_report import reports

from dynamic_asgs.config import load_schema
from dynamic_asgs.fleet.report import CellReport, _conforms

SCHEMA = Draft202012Validator(load_schema("dynamic_asgs.fleet", "schemas/cell_report.json"))
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**54) | st.floats(allow_nan=True)
                    | st.text(max_size=12) | st.sampled_from(["", "a", "a\n", "2026-01-01T00:00:00Z", "x" * 200]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


@given(reports)
def test_every_report_an_agent_sends_passes_the_direct_check(report: CellReport) -> None:
    assert _conforms(json.loads(report.to_bytes()))


@settings(max_examples=400)
@given(reports, st.data())
def test_the_direct_check_accepts_nothing_the_schema_refuses(report: CellReport, data: st.DataObject) -> None:
    raw = report.to_json()
    mutated = copy.deepcopy(raw)
    where = data.draw(st.sampled_from(paths(raw)))
    change = data.draw(st.sampled_from(["replace", "add", "drop"]))
    if not where:
        mutated = data.draw(JSON)
    else:
        parent = mutated
        for step in where[:-1]:
            parent = parent[step]
        if change == "replace":
            parent[where[-1]] = data.draw(JSON)
        elif change == "drop" and isinstance(parent, dict):
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8))] = data.draw(JSON)
    if _conforms(mutated):
        assert list(SCHEMA.iter_errors(mutated)) == []
