"""Silent drift: a chain edited in place (same hash comment, same rule count) is found and repaired.

The real agent daemon over a namespace cell (legacy and nft) behind the real control plane.
Someone widens one accept rule to every address, in a container's ``asg-`` chain (silk's
layout) or in the shared chain of its group (the default layout): the hash comment and the
rule count stay, so neither a hash nor a count tells. The agent's scheduled whole-table read
compares each chain's saved text with its fingerprint and rewrites the chain; with the
fingerprint file the same holds for an edit made while the agent was down. What the user
sees: the destination no ASG allows is open while the edit lives and refused again after one
verification interval.
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
from support.plans import digest_of
from support.stack import ControlPlane, asg, control_plane, start_agent, store_add

ALLOWED, FORBIDDEN = "198.18.3.1", "198.18.3.2"
RULES = [{"protocol": "tcp", "destination": ALLOWED, "ports": "80"}]
VERIFY = 5  # seconds, the smallest verification interval the agent accepts


@pytest.fixture(params=[(backend, "shared") for backend in IPTABLES_BACKENDS] + [("legacy", "per-container")],
                ids="-".join)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Cell, ControlPlane, Path, str]]:
    """A cell with container ``a`` in space ``s1``, the control plane, the store, and the agent's chain layout."""
    backend, layout = request.param
    require_backend(backend)
    with cell(backend, tmp_path) as c, control_plane(tmp_path, [asg("web", RULES, running=["s1"])]) as plane:
        c.add_destination("d", [ALLOWED, FORBIDDEN], tcp=[80])
        store = tmp_path / "store.json"
        c.add_container("a")
        c.hook("a")
        store_add(store, c, "a", space="s1")
        yield c, plane, store, layout


def _widen(c: Cell) -> None:
    """Replace the accept rule by one for every address, in place, keeping every hash comment and rule count.

    Per-container layout: rule 3 of the ASG chain's 4 (after RELATED and INVALID). Shared layout (the
    default): the ASG chain's rule 3 jumps to the group's chain, whose one rule (it carries that chain's
    hash) is rewritten with the same comment.
    """
    chain = chains.asg_chain_name("a")
    before = c.rules(4, chain)
    assert len(before) == 4, before
    widened = "-m iprange -p tcp --dst-range 0.0.0.0-255.255.255.255 -m tcp --dport 80 -j ACCEPT"
    if ALLOWED in before[2]:
        c.restore(4, [f"-R {chain} 3 {widened}"])
    else:
        shared = before[2].rsplit(" -j ", 1)[1]
        assert chains.is_shared_chain(shared), before
        held = c.rules(4, shared)
        assert len(held) == 1 and ALLOWED in held[0], held
        c.restore(4, [f"-R {shared} 1 -m comment --comment dasg:{shared.removeprefix(chains.SHARED_PREFIX)} {widened}"])
        before, chain = held, shared
    after = c.rules(4, chain)
    assert after != before and len(after) == len(before) and digest_of(after[0]) == digest_of(before[0])


def _restricted(c: Cell) -> bool:
    return c.probe("a", "tcp", FORBIDDEN, 80) == "refused" and c.probe("a", "tcp", ALLOWED, 80) == "ok"


def test_an_in_place_edit_is_repaired_within_a_verification_interval_and_after_a_restart(
        setup: tuple[Cell, ControlPlane, Path, str], tmp_path: Path) -> None:
    c, plane, store, layout = setup
    kept = tmp_path / "state" / "fingerprints.json"
    agent = start_agent(tmp_path, c, plane.policy, store, kernel_verify_interval_seconds=VERIFY,
                        fingerprint_file=str(kept), asg_chain_layout=layout)
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
                            fingerprint_file=str(kept), asg_chain_layout=layout)
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
