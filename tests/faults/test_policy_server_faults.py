"""Policy server down, slow, or answering 500s and garbage: cells keep their current rules.

The real agent daemon over a legacy cell talks mutual TLS to a small fake policy server
that speaks the real wire format (``FakePolicyServer``) and can be told to misbehave.
Through every fault the container's chain keeps its ruleset hash and its parent keeps
jumping to it; a container added meanwhile in a space the cached groups cover is still
planned from them; once the server answers well again a change made meanwhile arrives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest

from dynamic_asgs.asg import chains
from support.cell import Cell, cell
from support.daemons import Daemon, PolicyServer, make_certs, wait_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.faults import FakePolicyServer, record
from support.stack import Agent, start_agent, store_add

FAULTS = ["500", "garbage", "wrong-schema", "html", "truncated", "slow", "down"]


def document(port: str) -> dict[str, Any]:
    rules = [{"protocol": "tcp", "destination": "10.7.0.0/16", "ports": port}]
    return {"next": 0, "security_groups": [{
        "guid": "g1", "name": "web", "rules": json.dumps(rules), "staging_default": False,
        "running_default": False, "staging_space_guids": [], "running_space_guids": ["s1"]}]}


@pytest.fixture
def the_cell(tmp_path: Path) -> Iterator[Cell]:
    require_backend("legacy")
    with cell("legacy", tmp_path) as c:
        yield c


def _digest(c: Cell, handle: str) -> str | None:
    rules = c.rules(4, chains.asg_chain_name(handle))
    parent = c.rules(4, chains.netout_chain_name(handle))
    if not rules or len(parent) != 2 or not parent[0].endswith(f"-j {chains.asg_chain_name(handle)}"):
        return None
    return rules[0].split('"dasg:')[1].split('"')[0] if '"dasg:' in rules[0] else None


def _allows(c: Cell, handle: str, port: str) -> bool:
    return any(f"--dport {port}" in r or f"--dports {port}" in r for r in c.enforced(4, chains.asg_chain_name(handle)))


def _failed_polls(agent: Agent) -> int:
    return len(agent.daemon.events("cycle-failed")) + len(agent.daemon.events("cycle-done"))


def _more_cycles(agent: Agent, before: int) -> bool:
    return _failed_polls(agent) > before


def test_a_faulty_policy_server_leaves_the_rules_in_place(the_cell: Cell, tmp_path: Path) -> None:
    c = the_cell
    pki = make_certs(tmp_path / "fake-ps-pki", "ps")
    fake = FakePolicyServer(pki, document("80"))
    policy = PolicyServer(cast(Daemon, None), fake.port, 0, pki)
    store = tmp_path / "store.json"
    c.add_container("a")
    c.hook("a")
    store_add(store, c, "a", space="s1")
    recoveries: list[float] = []
    agent = start_agent(tmp_path, c, policy, store, client_timeout_seconds=1)
    try:
        wait_for(lambda: _allows(c, "a", "80"), timeout=60, what="the first ruleset")
        good, current = _digest(c, "a"), "80"
        assert good is not None
        for n, fault in enumerate(FAULTS):
            if fault == "down":
                fake.down()
            else:
                fake.mode, fake.delay = fault, 3.0
            fake.document = document(str(1000 + n))  # what a healthy server would now say
            wait_for(lambda: agent.status()["policy_server"]["error"], timeout=60,
                     what=f"the agent to notice {fault}")
            before = _failed_polls(agent)
            wait_for(partial(_more_cycles, agent, before), timeout=60, what=f"another cycle under {fault}")
            assert _digest(c, "a") == good, f"{fault}: the rules must stay exactly as they were"
            assert agent.status()["containers"]["a"]["ruleset"]["ipv4"] == good
            if fault == "html":  # a new container in a covered space is planned from the cached groups
                c.add_container("b")
                c.hook("b")
                store_add(store, c, "b", space="s1")
                wait_for(lambda: _digest(c, "b") is not None, timeout=30, what="b from the cached groups")
                assert _allows(c, "b", current) and _digest(c, "b") != good  # same rules, b's own chain
            if fault == "down":
                fake.up()
            fake.mode = "ok"
            started = time.monotonic()
            wait_for(partial(_allows, c, "a", str(1000 + n)), timeout=60, what=f"recovery from {fault}")
            recoveries.append(time.monotonic() - started)
            good, current = _digest(c, "a"), str(1000 + n)
            assert good is not None
        assert agent.daemon.running()
        assert agent.daemon.events("policy-server-unavailable-keeping-rules")
    finally:
        agent.daemon.stop()
        fake.close()
    record("policy-server-faults", injected=len(FAULTS), bad_inputs=5, violations=0, recoveries=recoveries)


@pytest.mark.parametrize("backend", IPTABLES_BACKENDS)
def test_a_space_the_server_refuses_freezes_no_other_container(backend: str, tmp_path: Path) -> None:
    # Issue 13, class 4: one store entry whose space the server answers 400 to must not stop updates
    # for the rest of the cell. Bisection sets the space aside; its container keeps what it has.
    require_backend(backend)
    pki = make_certs(tmp_path / "fake-ps-pki", "ps")

    def groups(port: str) -> dict[str, Any]:
        rules = json.dumps([{"protocol": "tcp", "destination": "10.7.0.0/16", "ports": port}])
        return {"next": 0, "security_groups": [{
            "guid": "g1", "name": "web", "rules": rules, "staging_default": False, "running_default": False,
            "staging_space_guids": [], "running_space_guids": [f"s{i}" for i in range(6)]}]}

    fake = FakePolicyServer(pki, groups("80"))
    policy = PolicyServer(cast(Daemon, None), fake.port, 0, pki)
    store = tmp_path / "store.json"
    with cell(backend, tmp_path) as c:
        for i in range(6):
            c.add_container(f"c{i}")
            c.hook(f"c{i}", versions=(4,))
            store_add(store, c, f"c{i}", space=f"s{i}")
        agent = start_agent(tmp_path, c, policy, store, enable_ipv6=False)
        try:
            wait_for(lambda: all(_allows(c, f"c{i}", "80") for i in range(6)), timeout=60, what="the first rulesets")
            held = c.enforced(4, chains.asg_chain_name("c3"))
            bad_inputs = 0
            for n, refused in enumerate(("s3", "s0")):
                fake.refuse_spaces = {refused}
                bad_inputs += 1
                port = str(1000 + n)
                fake.document, fake.version = groups(port), 2 + n
                others = [f"c{i}" for i in range(6) if f"s{i}" not in ("s3", refused)]
                wait_for(lambda: all(_allows(c, h, port) for h in others), timeout=60,  # noqa: B023 - waited here
                         what=f"every container but the one in {refused} updated")
                assert c.enforced(4, chains.asg_chain_name("c3")) == held  # set aside, not emptied, not widened
                status = agent.status()
                assert refused in status["policy_server"]["refused_spaces"]
                assert agent.daemon.running()
            assert agent.daemon.events("space-refused-by-policy-server")
            settles = [e for e in agent.daemon.events("cycle-done") if e["data"]["kind"] == "partial"]
            assert len(settles) < 200, "settle passes ran back to back"
            assert "asg_refused_spaces 2.0" in agent.metrics()  # asked again after retry_seconds (unit-tested)
        finally:
            agent.daemon.stop()
            fake.close()
    record("refused-space", injected=2, bad_inputs=bad_inputs, violations=0)
