"""The Cloud Controller stand-in: UAA and CC wire formats, filters, faults and file reloads."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dynamic_asgs.errors import InputError
from dynamic_asgs.lager import Logger
from dynamic_asgs.local.cc_stub.catalog import load_catalog
from dynamic_asgs.local.cc_stub.server import FileWatcher
from support.daemons import InProcessStub, inprocess_stub, wait_for

GROUPS = [
    {"name": "dns", "globally_enabled": {"running": True, "staging": True},
     "rules": [{"protocol": "udp", "destination": "8.8.8.8", "ports": "53"}]},
    {"name": "db", "guid": "db-guid", "rules": [], "running_spaces": ["space-a"], "staging_spaces": ["space-b"]},
    {"name": "cache", "rules": [{"protocol": "tcp", "destination": "10.0.0.300", "ports": "6379"}],
     "running_spaces": ["space-b"]},
]


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[InProcessStub]:
    with inprocess_stub(tmp_path, GROUPS) as stub:
        yield stub


def token(stub: InProcessStub, secret: str = "secret") -> requests.Response:
    return requests.post(f"{stub.url}/oauth/token", data={"grant_type": "client_credentials"},
                         auth=("network-policy", secret), verify=str(stub.pki.ca.cert_path), timeout=5)


def listing(stub: InProcessStub, query: str = "", *, auth: bool = True) -> requests.Response:
    headers = {"Authorization": f"bearer {token(stub).json()['access_token']}"} if auth else {}
    return requests.get(f"{stub.url}/v3/security_groups{query}", headers=headers,
                        verify=str(stub.pki.ca.cert_path), timeout=5)


def names(response: requests.Response) -> list[str]:
    return [r["name"] for r in response.json()["resources"]]


def test_uaa_token_endpoint(stub: InProcessStub) -> None:
    good = token(stub)
    assert good.status_code == 200
    assert set(good.json()) >= {"access_token", "token_type", "expires_in"} and good.json()["expires_in"] == 3600
    bad = token(stub, "wrong")
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"


def test_v3_listing_needs_a_token_and_has_ccs_shape(stub: InProcessStub) -> None:
    refused = listing(stub, auth=False)
    assert refused.status_code == 401 and refused.json()["errors"][0]["title"] == "CF-InvalidAuthToken"
    doc = listing(stub, "?per_page=2").json()
    assert doc["pagination"]["total_results"] == 3 and doc["pagination"]["total_pages"] == 2
    assert doc["pagination"]["next"]["href"] == f"{stub.url}/v3/security_groups?page=2&per_page=2"
    assert doc["pagination"]["previous"] is None
    db = doc["resources"][1]
    assert db["guid"] == "db-guid"
    assert db["relationships"] == {"staging_spaces": {"data": [{"guid": "space-b"}]},
                                   "running_spaces": {"data": [{"guid": "space-a"}]}}
    assert db["globally_enabled"] == {"running": False, "staging": False}
    assert db["links"]["self"]["href"].endswith("/v3/security_groups/db-guid")
    last = listing(stub, "?per_page=2&page=2").json()
    assert last["pagination"]["next"] is None and [r["name"] for r in last["resources"]] == ["cache"]


@pytest.mark.parametrize(("query", "expected"), [
    ("?names=db,cache", ["db", "cache"]),
    ("?guids=db-guid", ["db"]),
    ("?running_space_guids=space-b", ["cache"]),
    ("?staging_space_guids=space-b", ["db"]),
    ("?globally_enabled_running=true", ["dns"]),
])
def test_v3_filters(stub: InProcessStub, query: str, expected: list[str]) -> None:
    assert names(listing(stub, query)) == expected


@pytest.mark.parametrize("query", ["?per_page=0", "?per_page=5001", "?page=0", "?page=x"])
def test_bad_paging_is_a_cc_error(stub: InProcessStub, query: str) -> None:
    r = listing(stub, query)
    assert r.status_code == 400 and r.json()["errors"][0]["title"].startswith("CF-")


def test_invalid_rules_are_served_as_given(stub: InProcessStub) -> None:
    cache = listing(stub, "?names=cache").json()["resources"][0]
    assert cache["rules"] == [{"protocol": "tcp", "destination": "10.0.0.300", "ports": "6379"}]


def test_unknown_fault_switches_are_refused(stub: InProcessStub) -> None:
    with pytest.raises(InputError, match="unknown fault 'explode'"):
        stub.state.set_faults({"explode": 1})
    with pytest.raises(InputError, match="fault 'latency_ms': wrong type str"):
        stub.state.set_faults({"latency_ms": "slow"})


def test_file_edits_reload_and_bump_last_update(stub: InProcessStub) -> None:
    log = io.StringIO()
    watcher = FileWatcher(stub.asgs, stub.state, base_url=stub.url, log=Logger("w", stream=log), interval=0.02)
    watcher.start()
    try:
        before = stub.state.last_update
        stub.asgs.write_text(json.dumps({"security_groups": GROUPS[:1]}))
        wait_for(lambda: stub.state.last_update != before, what="a reload")
        assert names(listing(stub)) == ["dns"]
        reloaded = stub.state.last_update
        stub.asgs.write_text("security_groups: [")
        wait_for(lambda: "w.reload-failed" in log.getvalue(), what="the failed reload to be logged")
        assert stub.state.last_update == reloaded and names(listing(stub)) == ["dns"]
    finally:
        watcher.stop()


def test_both_file_forms_load_and_guids_are_stable(tmp_path: Path) -> None:
    human = tmp_path / "asgs.yml"
    human.write_text("security_groups:\n  - name: dns\n    running_spaces: [s1]\n")
    first = load_catalog(human, base_url="https://cc").groups[0]
    cc_form = tmp_path / "listing.json"
    cc_form.write_text(json.dumps({"resources": [json.loads(first.resource)]}))
    again = load_catalog(cc_form, base_url="https://cc").groups[0]
    assert (again.guid, again.name, again.running_spaces) == (first.guid, "dns", frozenset({"s1"}))
    assert load_catalog(human, base_url="https://cc").groups[0].guid == first.guid


@pytest.mark.parametrize(("content", "error"), [
    ({"security_groups": [{"rules": []}]}, "security_groups[0]: name: must be a non-empty string"),
    ({"security_groups": [{"name": "a", "running_spaces": "s1"}]}, "security_groups[0]: running_spaces: must be"),
    ({"security_groups": [{"name": "a", "guid": "g"}, {"name": "b", "guid": "g"}]}, "guid g appears twice"),
    ({"groups": []}, "expected a 'security_groups' or 'resources' list"),
])
def test_bad_files_are_refused_with_the_entry(tmp_path: Path, content: dict[str, Any], error: str) -> None:
    path = tmp_path / "asgs.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputError) as info:
        load_catalog(path, base_url="https://cc")
    assert str(info.value).startswith(f"{path}: ") and error in str(info.value)


def test_the_cli_exits_2_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "asgs.json"
    path.write_text("{")
    proc = subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "cc-stub", "--asgs", str(path), "--pki-dir",
                           str(tmp_path / "pki"), "--port", "0", "--internal-port", "0", "--control-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"dynamic-asgs cc-stub: error: {path}: not valid JSON")
    assert "Traceback" not in proc.stderr
