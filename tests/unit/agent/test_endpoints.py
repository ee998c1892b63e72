"""The agent's force and debug endpoints: silk's paths, status codes and bodies."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import requests

from dynamic_asgs.agent.endpoints import LocalServer, debug_server, force_server
from dynamic_asgs.agent.status import (
    AgentStatus,
    ContainerStatus,
    DisabledStatus,
    Drift,
    PolicyServerStatus,
    StoreStatus,
    Totals,
    instant,
)
from dynamic_asgs.errors import ConfigError
from dynamic_asgs.lager import Logger


@pytest.fixture
def calls() -> list[tuple[str, str]]:
    return []


def one_container() -> AgentStatus:
    """A status document with one container (h1, three rules) and no cycle yet."""
    h1 = ContainerStatus(app_guid="app-1", space_guid="s1", workload="app", ruleset={"ipv4": "d1"}, rule_count=3,
                         applied_at=instant(1_700_000_000.25), verified_at=None, dataset_version=7,
                         enforcing_since=instant(1_700_000_000.25))
    return AgentStatus(dataset_version=7, dataset_changed_at=None, containers={"h1": h1},
                       totals=Totals(containers=1, rules=3, lagging=0, store_entries=1, invalid_store_entries=0),
                       last_cycle=None, drift=Drift(repaired=0, last=None), settling=(),
                       policy_server=PolicyServerStatus(error=None, last_success=None, refused_spaces={}),
                       store=StoreStatus(error=None))


def serve(server: LocalServer) -> Iterator[str]:
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture
def force(calls: list[tuple[str, str]]) -> Iterator[str]:
    def sync(handle: str) -> None:
        calls.append(("sync", handle))
        if handle == "broken":
            raise RuntimeError("restore failed at line 3")

    def cleanup(handle: str) -> None:
        calls.append(("cleanup", handle))
        if handle == "broken":
            raise RuntimeError("iptables lock busy")

    yield from serve(force_server(host="127.0.0.1", port=0, enabled=True, sync_container=sync,
                                 cleanup_container=cleanup, logger=Logger("t", stream=io.StringIO())))


def test_force_sync(force: str, calls: list[tuple[str, str]]) -> None:
    r = requests.get(f"{force}/force-asgs-for-container", params={"container": "h1"}, timeout=5)
    assert (r.status_code, r.text) == (200, "updated container h1")
    r = requests.post(f"{force}/force-asgs-for-container?container=broken", timeout=5)
    assert (r.status_code, r.text) == (500, "failed to update asgs for container broken: restore failed at line 3")
    r = requests.get(f"{force}/force-asgs-for-container", timeout=5)
    assert (r.status_code, r.text) == (400, "no container specified")
    assert calls == [("sync", "h1"), ("sync", "broken")]


def test_orphan_cleanup_never_blocks_a_deletion(force: str, calls: list[tuple[str, str]]) -> None:
    r = requests.get(f"{force}/force-orphaned-asgs-cleanup?container=h1", timeout=5)
    assert (r.status_code, r.text) == (200, "cleaned up ASGs for container h1")
    r = requests.get(f"{force}/force-orphaned-asgs-cleanup?container=broken", timeout=5)
    assert r.status_code == 200
    assert r.text == ("deferred cleanup of ASGs for container broken: will retry on next poll cycle "
                      "(iptables lock busy)")
    assert requests.get(f"{force}/nope", timeout=5).status_code == 404


def test_disabled_syncing_answers_405_and_does_nothing(calls: list[tuple[str, str]]) -> None:
    server = force_server(host="127.0.0.1", port=0, enabled=False, sync_container=lambda h: calls.append(("s", h)),
                         cleanup_container=lambda h: calls.append(("c", h)), logger=Logger("t", stream=io.StringIO()))
    for base in serve(server):
        for path in ("force-asgs-for-container", "force-orphaned-asgs-cleanup"):
            r = requests.get(f"{base}/{path}?container=h1", timeout=5)
            assert (r.status_code, r.text) == (405, "ASG syncing has been disabled administratively")
    assert calls == []


def test_debug_server_log_level_and_status() -> None:
    out = io.StringIO()
    logger = Logger("vxlan-policy-agent", stream=out)
    server = debug_server(host="127.0.0.1", port=0, logger=logger, status=one_container)
    for base in serve(server):
        assert requests.get(f"{base}/log-level", timeout=5).text == "info"
        r = requests.put(f"{base}/log-level", data="debug", timeout=5)
        assert (r.status_code, r.text, logger.level) == (200, "debug", "debug")
        r = requests.post(f"{base}/log-level", data="loud", timeout=5)
        assert r.status_code == 400 and "unknown log level" in r.text and logger.level == "debug"
        r = requests.get(f"{base}/asg-status", timeout=5)
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.json()["containers"]["h1"]["rule_count"] == 3
        assert r.text == json.dumps(one_container().to_json(), indent=1)
        assert AgentStatus.from_json(r.json()) == one_container()
    assert json.loads(out.getvalue().splitlines()[0])["data"] == {"level": "debug"}


def test_a_failing_status_callable_answers_500() -> None:
    def boom() -> AgentStatus:
        raise KeyError("x")

    server = debug_server(host="127.0.0.1", port=0, logger=Logger("t", stream=io.StringIO()), status=boom)
    for base in serve(server):
        assert requests.get(f"{base}/asg-status", timeout=5).status_code == 500
        assert requests.get(f"{base}/log-level", timeout=5).status_code == 200


def test_a_port_in_use_is_a_configuration_error_naming_the_key() -> None:
    taken = debug_server(host="127.0.0.1", port=0, logger=Logger("t", stream=io.StringIO()), status=DisabledStatus)
    try:
        with pytest.raises(ConfigError, match=rf"^debug_server_port 127.0.0.1:{taken.port}: cannot listen: "
                                              "Address already in use$"):
            debug_server(host="127.0.0.1", port=taken.port, logger=Logger("t", stream=io.StringIO()),
                         status=DisabledStatus)
    finally:
        taken.stop()


def test_a_disabled_agent_says_so() -> None:
    server = debug_server(host="127.0.0.1", port=0, logger=Logger("t", stream=io.StringIO()), status=DisabledStatus)
    for base in serve(server):
        assert requests.get(f"{base}/asg-status", timeout=5).json() == {"enable_asg_syncing": False}
