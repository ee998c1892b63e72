"""The agent against hostile inputs that are not injection: colliding handles, a group that cannot be
parsed, a cleanup call for a live container (issue 13, classes 2, 3 and 8, agent side).

The real agent daemon over a namespace cell (legacy and nft) behind the real control plane;
store entries are written by hand, as a CNI that checks nothing (silk's cni-wrapper-plugin)
would write them. What the user sees is asserted with real traffic: the first container of a
colliding pair keeps exactly its rules, a neighbour stays restricted, the agent stays up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from support.cell import Cell, cell
from support.daemons import wait_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.faults import record
from support.stack import ControlPlane, asg, control_plane, start_agent, store_add

D1, D2 = "198.18.4.1", "198.18.4.2"
FIRST, SECOND = "0a1b2c3d-4e5f-6a7b-8c9d-000000000001", "0a1b2c3d-4e5f-6a7b-8c9d-000000000002"


@pytest.fixture(params=IPTABLES_BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Cell, ControlPlane, Path]]:
    require_backend(request.param)
    groups = [asg("to-d1", [{"protocol": "tcp", "destination": D1, "ports": "80"}], running=["s1"]),
              asg("to-d2", [{"protocol": "tcp", "destination": D2, "ports": "80"}], running=["s2"])]
    with cell(request.param, tmp_path) as c, control_plane(tmp_path, groups) as plane:
        c.add_destination("d", [D1, D2], tcp=[80])
        yield c, plane, tmp_path / "store.json"


def _rules(c: Cell) -> list[str]:
    return [line for version in (4, 6) for line in c.save(version).splitlines() if line.startswith("-A")]


def _reach(c: Cell, handle: str) -> tuple[str, str]:
    return c.probe(handle, "tcp", D1, 80), c.probe(handle, "tcp", D2, 80)


def test_a_second_container_with_the_same_chain_names_is_refused_and_the_first_keeps_its_rules(
        setup: tuple[Cell, ControlPlane, Path], tmp_path: Path) -> None:
    c, plane, store = setup
    assert chains.asg_chain_name(FIRST) == chains.asg_chain_name(SECOND)
    c.add_container(FIRST)
    c.hook(FIRST)
    store_add(store, c, FIRST, space="s1")
    agent = start_agent(tmp_path, c, plane.policy, store)
    try:
        wait_for(lambda: _reach(c, FIRST) == ("ok", "refused"), timeout=30, what="the first container enforced")
        before = _rules(c)
        c.add_container(SECOND)  # a CNI that checks nothing records a container whose chains would be the same
        store_add(store, c, SECOND, space="s2")
        wait_for(lambda: SECOND in agent.status()["last_cycle"]["refused"], timeout=30,
                 what="the second container refused")
        status = agent.status()
        assert FIRST in status["last_cycle"]["refused"][SECOND]
        assert _reach(c, FIRST) == ("ok", "refused")  # not widened to the second's group, not narrowed
        assert _rules(c) == before
        assert agent.daemon.events("container-refused") and agent.daemon.proc.poll() is None
        assert 'asg_containers{state="refused"} 1.0' in agent.metrics()
    finally:
        agent.daemon.stop()
    record("chain-collision", injected=1, bad_inputs=1, violations=0)


def test_a_group_whose_rules_cannot_be_parsed_is_dropped_alone_and_the_agent_stays_up(
        setup: tuple[Cell, ControlPlane, Path], tmp_path: Path) -> None:
    c, plane, store = setup
    for handle, space in (("a", "s1"), ("b", "s2")):
        c.add_container(handle)
        c.hook(handle)
        store_add(store, c, handle, space=space)
    agent = start_agent(tmp_path, c, plane.policy, store)
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(tmp_path / "policy.db")))
    try:
        wait_for(lambda: _reach(c, "a") == ("ok", "refused") and _reach(c, "b") == ("refused", "ok"), timeout=30,
                 what="both containers enforced")
        plane.syncer.stop()  # it would put CC's groups back over what this test writes into the policy DB
        bad_inputs = 0
        for rules in ("[" * 50_000 + "]" * 50_000, '[{"protocol": "tcp", "ports": 9' + "9" * 10_000 + "}]"):
            # What a broken or hostile writer of the policy DB could serve: s1's group, unparsable.
            PolicyStore(engine).replace([
                GroupRow("guid-to-d1", "to-d1", rules, False, False, (), ("s1",)),
                GroupRow("guid-to-d2", "to-d2", json.dumps([{"protocol": "tcp", "destination": D2, "ports": "80,443"}]),
                         False, False, (), ("s2",))], cc_last_update=None)
            bad_inputs += 1
            wait_for(lambda: _reach(c, "a") == ("refused", "refused"), timeout=30,
                     what="the unparsable group granting nothing (fail closed)")
            assert _reach(c, "b") == ("refused", "ok")
            assert any("443" in rule for rule in c.enforced(4, chains.asg_chain_name("b")))  # the others still apply
            assert agent.daemon.proc.poll() is None  # no crash, no restart loop
        assert agent.daemon.events("security-group-dropped-invalid")
        assert "asg_invalid_security_groups 1.0" in agent.metrics()
    finally:
        agent.daemon.stop()
        engine.dispose()
    record("unparsable-group", bad_inputs=bad_inputs, violations=0)


def test_a_cleanup_call_for_a_live_container_removes_nothing(setup: tuple[Cell, ControlPlane, Path],
                                                             tmp_path: Path) -> None:
    c, plane, store = setup
    c.add_container("a")
    c.hook("a")
    store_add(store, c, "a", space="s1")
    agent = start_agent(tmp_path, c, plane.policy, store)
    try:
        wait_for(lambda: _reach(c, "a") == ("ok", "refused"), timeout=30, what="the container enforced")
        before = _rules(c)
        for _ in range(3):
            assert agent.force_cleanup("a").status_code == 200
        assert _rules(c) == before and _reach(c, "a") == ("ok", "refused")
        assert agent.daemon.events("cleanup-kept-live-container")
    finally:
        agent.daemon.stop()
    record("cleanup-live-container", bad_inputs=3, violations=0)
