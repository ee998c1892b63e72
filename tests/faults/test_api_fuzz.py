"""The internal API fuzzed from docs/policy-server-internal-api.yaml: no 5xx, no crash.

A hypothesis generator built from the document's parameters (schemathesis would add nine
packages to the shared test environment; this covers the same ground for one route): each
documented query parameter and header is either absent, a value its schema allows, or
anything at all (text, numbers, control characters, huge values); POST bodies are the
documented object with arbitrary values, or arbitrary JSON, or arbitrary bytes. Requests
go over mutual TLS to the real policy-server process; every answer must be one the document
lists (200/304/400), carry a body matching its schema, and the server must stay up.
Rule parsing and translation are fuzzed in tests/unit/asg/test_properties.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from dynamic_asgs.policydb.db import create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from support.daemons import PolicyServer, database, database_config, start_policy_server
from support.faults import record

DOC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "policy-server-internal-api.yaml").read_text())
ROUTE = "/networking/v1/internal/security_groups"
PARAMS = DOC["components"]["parameters"]
RESPONSES = {int(k) for k in DOC["paths"][ROUTE]["get"]["responses"]}
ERROR = Draft202012Validator(DOC["components"]["schemas"]["Error"])
_REFS = json.loads(json.dumps(DOC["components"]["schemas"]["SecurityGroupsPage"]).replace(
    "#/components/schemas/", "#/$defs/"))
_DEFS = json.loads(json.dumps(DOC["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/"))
PAGE = Draft202012Validator({**_REFS, "$defs": _DEFS})

ANYTHING = st.one_of(st.text(max_size=60), st.integers(), st.floats(allow_nan=True),
                     st.sampled_from(["", "-1", "1e400", "NaN", "inf", "0x10", " 5", "5 ", "٣", "1" * 400]))


def _value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2 ** 63)), schema.get("maximum", 2 ** 63))
    if kind == "number":
        return st.floats(schema.get("minimum", -1e9), min(schema.get("maximum", 1e9), 1.0))  # keep waits short
    return st.text(max_size=200)


def _param(name: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), _value(PARAMS[name]["schema"]), ANYTHING)


def _guids() -> st.SearchStrategy[str]:
    guid = st.one_of(st.sampled_from(["space-a", "space-b", ""]), st.from_regex(r"[A-Za-z0-9._:~-]{1,40}",
                                                                                  fullmatch=True), st.text(max_size=30))
    return st.lists(guid, max_size=8).map(",".join)


QUERY = st.fixed_dictionaries({"space_guids": st.one_of(st.none(), _guids(), ANYTHING), "from": _param("from"),
                               "limit": _param("limit"), "wait": _param("wait")})
# Header values as a client can send them (HTTP strips surrounding whitespace; requests refuses it).
HEADER = st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
                   .map(str.strip), st.just('"current"'))
BODY = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"space_guids": st.one_of(st.lists(st.text(max_size=20), max_size=5),
                                                                 ANYTHING),
                                        "from": ANYTHING, "limit": ANYTHING, "wait": st.floats(0, 1)}),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                 max_leaves=10),
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with database("sqlite", tmp) as db:
        engine = create_engine(db)
        upgrade(engine)
        PolicyStore(engine).replace([
            GroupRow("g1", "dns", '[{"protocol":"udp","destination":"8.8.8.8","ports":"53"}]', True, False, (), ()),
            GroupRow("g2", "db", '[{"protocol":"tcp","destination":"10.0.0.5","ports":"5432"}]', False, False,
                     ("space-b",), ("space-a",)),
            GroupRow("g3", "bad", '[{"protocol":"nope"}]', False, False, (), ("space-a",))], cc_last_update=None)
        engine.dispose()
        server = start_policy_server(tmp, database_config(db), workers=1)
        yield server
        assert server.daemon.running(), "the policy server must survive the fuzzing"
        server.daemon.stop()


COUNT = [0]


def _check(response: requests.Response) -> None:
    COUNT[0] += 1
    assert response.status_code in RESPONSES - {503}, (response.status_code, response.text[:200])
    if response.status_code == 200:
        PAGE.validate(response.json())
    elif response.status_code == 400:
        ERROR.validate(response.json())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=QUERY, etag=HEADER, body=BODY, method=st.sampled_from(["GET", "POST"]))
def test_fuzzed_requests_never_get_a_5xx(server: PolicyServer, query: dict[str, Any], etag: str | None,
                                          body: Any, method: str) -> None:
    params = {k: v for k, v in query.items() if v is not None}
    if isinstance(params.get("wait"), float | int) and not isinstance(params["wait"], bool):
        params["wait"] = min(abs(params["wait"]), 1)  # a matching ETag would hold the request that long
    headers = {"If-None-Match": etag} if etag is not None else {}
    kwargs: dict[str, Any] = {"params": params, "headers": headers, "verify": str(server.pki.server.ca),
                              "cert": server.client_cert(), "timeout": 30}
    if method == "POST" and body is not None:
        if isinstance(body, bytes):
            kwargs["data"] = body
        else:
            kwargs["json"] = body
    _check(requests.request(method, server.url + ROUTE, **kwargs))


def test_zz_fuzz_figures(server: PolicyServer) -> None:
    """Runs after the fuzz test in this module: the figures, and the server still answers."""
    r = requests.get(server.url + ROUTE, params={"space_guids": "space-a"}, verify=str(server.pki.server.ca),
                     cert=server.client_cert(), timeout=10)
    assert r.status_code == 200 and {g["guid"] for g in r.json()["security_groups"]} == {"g1", "g2", "g3"}
    record("internal-api-fuzz", bad_inputs=COUNT[0], violations=0)
