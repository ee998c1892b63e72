"""Container metadata store torn writes and garbage: the agent keeps the last good view.

The real agent daemon over a cell (legacy and nft); the store is damaged the way a writer killed
mid-write (silk's writer overwrites in place) or a broken disk would leave it, with the
version bumped so the agent notices. Through every fault each container keeps its
complete ruleset (no chain removed, no container dropped); once a good store is back, a
change made meanwhile is applied. A restarted agent that finds the store already
damaged must not take "unreadable" for "no containers" and sweep every chain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.metadata_store import MetadataStore
from support.cell import Cell, cell
from support.daemons import wait_for
from support.env import IPTABLES_BACKENDS, require_backend
from support.faults import record
from support.stack import Agent, ControlPlane, asg, control_plane, start_agent, store_add

RULES = [{"protocol": "tcp", "destination": "10.9.0.0/16", "ports": "80"}]


def _torn(good: str) -> str:
    return good[: len(good) // 2]


GARBAGE: dict[str, Callable[[str], str | bytes]] = {
    "torn-half": _torn,
    "empty-after-truncate": lambda good: "",
    "torn-one-byte-short": lambda good: good[:-1],
    "binary-garbage": lambda good: b"\x00\xff\xfe garbage \x89PNG",
    "invalid-utf8-json": lambda good: good.encode().replace(b'"ip"', b'"\xff\xfe"', 1),
    "json-array": lambda good: "[1, 2, 3]",
    "json-null": lambda good: "null",
}


@pytest.fixture(params=IPTABLES_BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Cell, ControlPlane, Path]]:
    require_backend(request.param)
    with cell(request.param, tmp_path) as c, control_plane(
            tmp_path, [asg("g", RULES, running=["s1", "s2"])]) as plane:
        store = tmp_path / "store.json"
        for handle, space in (("a", "s1"), ("b", "s2")):
            c.add_container(handle)
            c.hook(handle)
            store_add(store, c, handle, space=space)
        yield c, plane, store


def _damage(store: Path, damage: Callable[[str], str | bytes]) -> None:
    good = store.read_text()
    bad = damage(good)
    if isinstance(bad, str):
        bad = bad.encode()
    with open(store, "r+b") as out:  # in place, as silk's writer does
        out.truncate(0)
        out.write(bad)
    version = Path(f"{store}_version")
    version.write_text(str(int(version.read_text()) + 1))


def _enforced(c: Cell, handles: tuple[str, ...] = ("a", "b")) -> bool:
    return all(len(c.rules(4, chains.netout_chain_name(h))) == 2 and c.exists(4, chains.asg_chain_name(h))
               for h in handles)


def _good_copy(store: Path) -> tuple[str, str]:
    return store.read_text(), Path(f"{store}_version").read_text()


def _restore(store: Path, saved: tuple[str, str]) -> None:
    store.write_text(saved[0])
    version = Path(f"{store}_version")
    version.write_text(str(max(int(version.read_text() or 0), int(saved[1])) + 1))


def _cycles(agent: Agent) -> int:
    return len(agent.daemon.events("cycle-done"))


def _cycled(agent: Agent, count: int) -> bool:
    return _cycles(agent) >= count


def test_a_damaged_store_keeps_the_last_good_view(setup: tuple[Cell, ControlPlane, Path], tmp_path: Path) -> None:
    c, plane, store = setup
    agent = start_agent(tmp_path, c, plane.policy, store)
    recoveries: list[float] = []
    try:
        wait_for(lambda: _enforced(c), timeout=60, what="both containers' rules")
        for name, damage in GARBAGE.items():
            saved = _good_copy(store)
            _damage(store, damage)
            before = _cycles(agent)
            wait_for(partial(_cycled, agent, before + 2), timeout=30, what=f"two cycles over {name}")
            status = agent.status()
            assert status["store"]["error"], f"{name}: the agent must notice the damage"
            assert set(status["containers"]) == {"a", "b"}, f"{name}: the last good view must stay"
            assert _enforced(c), f"{name}: rules must stay in place"
            _restore(store, saved)
            started = time.monotonic()
            wait_for(lambda: agent.status()["store"]["error"] is None, timeout=30, what=f"recovery from {name}")
            recoveries.append(time.monotonic() - started)
        # A change made while the store was damaged is applied once it is readable again.
        saved = _good_copy(store)
        c.add_container("n")
        c.hook("n")
        store_add(store, c, "n", space="s1")
        wait_for(lambda: _enforced(c, ("a", "b", "n")), timeout=30, what="the new container after the faults")
        assert agent.daemon.running()
        assert saved[0] != store.read_text()
    finally:
        agent.daemon.stop()
    record("metadata-store-garbage", injected=len(GARBAGE), bad_inputs=len(GARBAGE), violations=0,
           recoveries=recoveries)


def test_garbage_in_the_version_file_keeps_the_view(setup: tuple[Cell, ControlPlane, Path], tmp_path: Path) -> None:
    c, plane, store = setup
    agent = start_agent(tmp_path, c, plane.policy, store)
    try:
        wait_for(lambda: _enforced(c), timeout=60, what="both containers' rules")
        version = Path(f"{store}_version")
        good = version.read_text()
        version.write_text("12abc\x00")
        before = _cycles(agent)
        wait_for(partial(_cycled, agent, before + 2), timeout=30, what="two cycles")
        assert set(agent.status()["containers"]) == {"a", "b"} and _enforced(c)
        version.write_text(str(int(good) + 1))
        store_add(store, c, "b", space="s1")  # a real change after the repair
        wait_for(lambda: agent.status()["containers"]["b"]["space_guid"] == "s1", timeout=30,
                 what="the change after the repair")
    finally:
        agent.daemon.stop()
    record("metadata-store-version-garbage", injected=1, bad_inputs=1)


def test_an_agent_restarted_over_a_damaged_store_sweeps_nothing(
        setup: tuple[Cell, ControlPlane, Path], tmp_path: Path) -> None:
    c, plane, store = setup
    agent = start_agent(tmp_path, c, plane.policy, store, name="first")
    try:
        wait_for(lambda: _enforced(c), timeout=60, what="both containers' rules")
    finally:
        agent.daemon.stop()
    saved = _good_copy(store)
    _damage(store, GARBAGE["torn-half"])
    agent = start_agent(tmp_path, c, plane.policy, store, name="second")
    try:
        wait_for(lambda: agent.daemon.events("store-unreadable-keeping-last-view"), timeout=30,
                 what="the damage to be noticed")
        wait_for(lambda: len(agent.daemon.events("cycle-failed")) >= 2, timeout=30,
                 what="two cycles (a sweep would have happened by now)")
        assert _enforced(c), "an unreadable store is no evidence that the containers are gone"
        cleanup = agent.force_cleanup("ghost")  # nor may a CNI cleanup call sweep them (silk: 200, deferred)
        assert cleanup.status_code == 200 and "deferred" in cleanup.text, cleanup.text
        assert _enforced(c)
        _restore(store, saved)
        wait_for(lambda: set(agent.status()["containers"]) == {"a", "b"}, timeout=30,
                 what="the agent to adopt the containers once the store is readable")
        assert _enforced(c)
        assert json.loads(store.read_text()).keys() == {"a", "b"}
    finally:
        agent.daemon.stop()
    record("metadata-store-garbage-at-start", injected=1, bad_inputs=1)
    assert MetadataStore(store).version() > 1
