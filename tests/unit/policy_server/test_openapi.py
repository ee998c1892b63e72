"""The OpenAPI document describes what the server really answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from dynamic_asgs.policy_server.api import FLEET_ROUTE, REPORTS_ROUTE, ROUTE
from dynamic_asgs.policy_server.dataset import Dataset
from dynamic_asgs.policy_server.query import MAX_SPACES, MAX_WAIT
from dynamic_asgs.policydb.store import GroupRow, Snapshot, StoredGroup

DOC = Path(__file__).parents[3] / "docs" / "policy-server-internal-api.yaml"


def document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DOC.read_text())
    return doc


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({**document(), "$ref": f"#/components/schemas/{name}"})


def test_document_is_openapi_3_1_with_the_route() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1") and set(doc["paths"]) == {ROUTE, REPORTS_ROUTE, FLEET_ROUTE}
    assert set(doc["paths"][ROUTE]) == {"get", "post"}
    params = doc["components"]["parameters"]
    assert {p["name"] for p in params.values()} == {"space_guids", "from", "limit", "wait", "If-None-Match", "app",
                                                     "space"}
    assert params["wait"]["schema"]["maximum"] == MAX_WAIT
    post = doc["paths"][ROUTE]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert post["properties"]["space_guids"]["maxItems"] == MAX_SPACES


def test_real_answers_match_the_documented_schema() -> None:
    rows = [GroupRow("g1", "dns", '[{"protocol":"udp","destination":"8.8.8.8","ports":"53"}]', True, True, (), ()),
            GroupRow("g2", "db", "[]", False, False, ("s2",), ("s1",))]
    dataset = Dataset(Snapshot(3, 0.0, [StoredGroup(i + 1, r, r.content_hash()) for i, r in enumerate(rows)]))
    for answer in (dataset.answer(["s1"]), dataset.answer(["s1"], limit=1), dataset.answer([])):
        errors = list(validator("SecurityGroupsPage").iter_errors(json.loads(answer.body)))
        assert errors == []
    assert list(validator("Error").iter_errors({"error": "limit: bad"})) == []


def test_the_fleet_routes_use_the_published_schemas() -> None:
    doc = document()
    assert set(doc["paths"][REPORTS_ROUTE]) == {"put", "post"} and set(doc["paths"][FLEET_ROUTE]) == {"get"}
    schemas = doc["components"]["schemas"]
    for name, path in (("CellReport", "cell-report.schema.json"), ("FleetView", "fleet-view.schema.json")):
        assert schemas[name] == {"$ref": path} and (DOC.parent / path).is_file()
    pattern = doc["components"]["parameters"]["app"]["schema"]["pattern"]
    assert pattern == json.loads((DOC.parent / "fleet-view.schema.json").read_text())["$defs"]["id"]["pattern"]
