"""Silent drift: an ASG chain edited in place (same first rule, same rule count) is found and repaired.

The real agent daemon over a namespace cell (legacy and nft) behind the real control plane.
Someone widens one accept rule of a container's ``asg-`` chain to every address: the
first rule (with the hash comment) and the rule count stay, so neither a hash nor a count
tells. The agent's scheduled whole-table read compares each chain's saved text with its
fingerprint and rewrites the chain; with the fingerprint file the same holds for an edit
made while the agent was down. What the user sees: the destination no ASG allows is open
while the edit lives and refused again after one verification interval.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamic_asgs.asg import chains
from support.cell import Cell, cell
from support.daemons import wait_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.faults import record
from support.stack import ControlPlane, asg, control_plane, start_agent, store_add

ALLOWED, FORBIDDEN = "198.18.3.1", "198.18.3.2"
RULES = [{"protocol": "tcp", "destination": ALLOWED, "ports": "80"}]
VERIFY = 5  # seconds, the smallest verification interval the agent accepts


@pytest.fixture(params=IPTABLES_BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Cell, ControlPlane, Path]]:
    require_backend(request.param)
    with cell(request.param, tmp_path) as c, control_plane(tmp_path, [asg("web", RULES, running=["s1"])]) as plane:
        c.add_destination("d", [ALLOWED, FORBIDDEN], tcp=[80])
        store = tmp_path / "store.json"
        c.add_container("a")
        c.hook("a")
        store_add(store, c, "a", space="s1")
        yield c, plane, store


def _widen(c: Cell) -> None:
    """Replace the accept rule by one for every address, in place (rule 3 of 4: after RELATED and INVALID)."""
    chain = chains.asg_chain_name("a")
    before = c.rules(4, chain)
    assert len(before) == 4 and ALLOWED in before[2], before
    c.restore(4, [f"-R {chain} 3 -m iprange -p tcp --dst-range 0.0.0.0-255.255.255.255 -m tcp --dport 80 -j ACCEPT"])
    after = c.rules(4, chain)
    assert after[0] == before[0] and len(after) == len(before) and after != before


def _restricted(c: Cell) -> bool:
    return c.probe("a", "tcp", FORBIDDEN, 80) == "refused" and c.probe("a", "tcp", ALLOWED, 80) == "ok"


def test_an_in_place_edit_is_repaired_within_a_verification_interval_and_after_a_restart(
        setup: tuple[Cell, ControlPlane, Path], tmp_path: Path) -> None:
    c, plane, store = setup
    kept = tmp_path / "state" / "fingerprints.json"
    agent = start_agent(tmp_path, c, plane.policy, store, kernel_verify_interval_seconds=VERIFY,
                        fingerprint_file=str(kept))
    recoveries = []
    try:
        wait_for(lambda: _restricted(c), timeout=30, what="the ASG enforced")
        for _ in range(2):
            wait_for(lambda: agent.status()["containers"]["a"]["verified_at"], timeout=3 * VERIFY,
                     what="the chains verified (fingerprinted) by a whole-table read after the write")
            _widen(c)
            assert c.probe("a", "tcp", FORBIDDEN, 80) == "ok"  # the edit is in effect
            edited = time.monotonic()
            wait_for(lambda: _restricted(c), timeout=3 * VERIFY + 10, interval=0.2, what="the drift repaired")
            recoveries.append(time.monotonic() - edited)
        status = wait_for(lambda: (st := agent.status())["containers"]["a"]["verified_at"] and st, timeout=3 * VERIFY,
                          what="the repaired chains verified, their fingerprints kept")
        assert status["drift"]["repaired"] == 2 and "edited in place" in status["drift"]["last"]["reason"]
        assert "asg_chain_drift_repaired_total 2.0" in agent.metrics()
        assert len(agent.daemon.events("chain-drift-repaired")) == 2
    finally:
        agent.daemon.stop()

    assert kept.exists() and kept.stat().st_mode & 0o777 == 0o600
    _widen(c)  # while the agent is down
    assert c.probe("a", "tcp", FORBIDDEN, 80) == "ok"
    restarted = start_agent(tmp_path, c, plane.policy, store, name="restarted", kernel_verify_interval_seconds=VERIFY,
                            fingerprint_file=str(kept))
    try:
        started = time.monotonic()
        wait_for(lambda: _restricted(c), timeout=30, interval=0.2, what="the drift made while down repaired")
        recoveries.append(time.monotonic() - started)
        # The status is a snapshot published after the dataplane returns (it never waits for a cycle): the
        # kernel may show the repair a moment before it does.
        wait_for(lambda: restarted.status()["drift"]["repaired"] == 1, timeout=5, what="the repair in the status")
    finally:
        restarted.daemon.stop()
    record("drift", injected=3, violations=0, recoveries=recoveries)
