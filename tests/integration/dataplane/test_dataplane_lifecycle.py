"""The dataplane over a real cell (legacy and nft): live updates, new and removed containers,
Go leftovers, restarts, and failures that must not spread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.agent.dataplane import cycle as cycle_module
from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import Chain, ChainSettings, ContainerChains, GroupIndex
from dynamic_asgs.filelock import locked
from support.cell import Cell, cell
from support.env import IPTABLES_BACKENDS, require_backend
from support.plans import container, dataplane, groups_for, log_events, plan

D1, D2 = "198.18.1.1", "198.18.1.2"
SPACES: dict[str, list[dict[str, Any]]] = {
    "to-d1": [{"protocol": "tcp", "destination": D1, "ports": "80"}],
    "to-d2": [{"protocol": "tcp", "destination": D2, "ports": "80"}],
    "logged-d1": [{"protocol": "tcp", "destination": D1, "ports": "80", "log": True}],
}
INDEX = GroupIndex(groups_for(SPACES))
TESTS = Path(__file__).resolve().parents[2]


@pytest.fixture(params=IPTABLES_BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cell]:
    require_backend(request.param)
    with cell(request.param, tmp_path) as c:
        c.add_destination("d", [D1, D2], tcp=[80])
        yield c


def wire(c: Cell, *handles: str, hook: bool = True) -> None:
    for handle in handles:
        c.add_container(handle)
        if hook:
            c.hook(handle)


def planned(c: Cell, handle: str, space: str, settings: ChainSettings | None = None) -> ContainerChains:
    return plan(container(handle, space, index=c.containers[handle].index), INDEX, settings)


def counters(c: Cell, chain: str) -> dict[str, int]:
    """The packet counter of each IPv4 rule of ``chain``, keyed by the rule (so found by what it matches)."""
    return dict(zip(c.rules(4, chain), c.packets(4, chain), strict=True))


def test_live_update_applies_to_running_containers_without_touching_others(env: Cell) -> None:
    wire(env, "a", "b")
    dp, _ = dataplane(env.runners())
    desired = {"a": planned(env, "a", "to-d1"), "b": planned(env, "b", "to-d1")}
    assert dp.apply(desired).ok
    assert env.probe("a", "open", D1, 80, conn="kept") == "ok"
    assert env.probe("b", "tcp", D1, 80) == "ok"
    b_counters = counters(env, "asg-b")
    b_allow = next(rule for rule in b_counters if D1 in rule and "--dport 80 -j ACCEPT" in rule)
    assert b_counters[b_allow] > 0  # b's connection went through its allow rule

    report = dp.apply({**desired, "a": planned(env, "a", "to-d2")})

    assert report.changed == ("a",) and report.unchanged == 1 and report.commits == 1
    assert env.probe("a", "tcp", D1, 80) == "refused"  # allowed a moment ago
    assert env.probe("a", "tcp", D2, 80) == "ok"  # newly allowed
    assert env.probe("a", "send", D1, conn="kept") == "ok"  # established flows keep going
    assert counters(env, "asg-b") == b_counters  # b untouched: the same rules, their counters kept
    assert env.probe("b", "tcp", D1, 80) == "ok"


def test_a_container_without_parent_waits_for_the_cni_then_a_forced_sync_touches_only_it(env: Cell) -> None:
    wire(env, "a")
    wire(env, "new", hook=False)
    dp, log = dataplane(env.runners())
    desired = {"a": planned(env, "a", "to-d1"), "new": planned(env, "new", "to-d2")}
    report = dp.apply(desired)
    assert "parent chain netout--new does not exist" in report.skipped["new"]
    assert not env.exists(4, chains.netout_chain_name("new")) and not env.exists(4, "asg-new")
    assert [e["handle"] for e in log_events(log, "container-skipped")] == ["new"]
    again = dp.apply(desired)
    assert "new" in again.skipped and again.commits == 0 and sum(f.restores for f in again.families.values()) == 0

    env.hook("new")  # the CNI creates the parent chain, then forces a sync
    a_packets = env.packets(4, "asg-a")
    forced = dp.apply_one(desired["new"])
    assert forced.changed == ("new",) and forced.ok
    assert env.probe("new", "tcp", D2, 80) == "ok" and env.probe("new", "tcp", D1, 80) == "refused"
    assert env.packets(4, "asg-a") == a_packets
    assert dp.apply(desired).commits == 0  # the next cycle agrees


def test_go_agent_leftovers_are_swept_on_the_first_cycle(env: Cell) -> None:
    wire(env, "b")
    # What a Go agent leaves behind: a candidate chain still linked from b's parent, and one of a gone container.
    env.restore(4, [":casg-b - [0:0]", "-A casg-b -j ACCEPT", "-I netout--b 1 -j casg-b",
                    ":casg-gone - [0:0]", "-A casg-gone -j ACCEPT"])
    dp, _ = dataplane(env.runners())

    report = dp.apply({"b": planned(env, "b", "to-d1")})

    assert report.ok and report.commits == 1 and set(report.deleted[4]) == {"casg-b", "casg-gone"}
    assert not env.exists(4, "casg-b") and not env.exists(4, "casg-gone")
    assert [r.split()[-1] for r in env.rules(4, "netout--b")] == ["asg-b", "icmp-port-unreachable"]
    assert env.probe("b", "tcp", D1, 80) == "ok" and env.probe("b", "tcp", D2, 80) == "refused"


def test_removed_containers_lose_their_chains_and_parents_fail_closed(env: Cell) -> None:
    wire(env, "a", "b")
    dp, _ = dataplane(env.runners())
    desired = {"a": planned(env, "a", "logged-d1", ChainSettings(asg_logging=True)), "b": planned(env, "b", "to-d1")}
    assert dp.apply(desired).ok
    log_chain = chains.log_chain_name("a")
    assert env.exists(4, log_chain) and env.probe("a", "tcp", D1, 80) == "ok"

    report = dp.apply({"b": desired["b"]})  # the store lost a while its container (and parent) live on

    assert set(report.deleted[4]) == {"asg-a", log_chain} and report.closed[4] == ("netout--a",)
    assert env.rules(4, "netout--a") == ["-A netout--a -j REJECT --reject-with icmp-port-unreachable"]
    assert env.probe("a", "tcp", D1, 80) == "refused"  # fail closed, never open
    assert not env.exists(4, "asg-a") and not env.exists(4, log_chain)
    assert env.probe("b", "tcp", D1, 80) == "ok"
    assert dp.state().keys() == {"b"}


def test_forced_orphan_cleanup_after_the_cni_deleted_a_container(env: Cell) -> None:
    wire(env, "a", "b")
    dp, _ = dataplane(env.runners())
    assert dp.apply({"a": planned(env, "a", "to-d1"), "b": planned(env, "b", "to-d1")}).ok
    env.unhook("a")  # the CNI removes its parent and hook, then asks for the cleanup
    report = dp.remove_orphans(["b"])
    assert report.deleted == {4: ("asg-a",)} and not report.closed
    assert not env.exists(4, "asg-a") and env.probe("b", "tcp", D1, 80) == "ok"


def test_a_restarted_agent_over_a_correct_table_writes_nothing(env: Cell, tmp_path: Path) -> None:
    wire(env, "a", "b", "c")
    containers: list[dict[str, Any]] = [{"handle": h, "space": s, "index": env.containers[h].index}
                                         for h, s in (("a", "to-d1"), ("b", "to-d2"), ("c", "to-d1"))]
    dp, _ = dataplane(env.runners())
    assert dp.apply({c["handle"]: planned(env, c["handle"], c["space"]) for c in containers}).ok
    calls = tmp_path / "calls.log"
    wrapper = tmp_path / "count"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec "$@"\n')
    wrapper.chmod(0o755)
    spec = {"backend": env.backend, "ns": env.ns, "lock_file": str(env.lock_file), "prefix": [str(wrapper)],
            "spaces": SPACES, "containers": containers}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("agent_process.py"))], input=json.dumps(spec),
                         text=True, capture_output=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(TESTS)})
    report = json.loads(out.stdout)
    invoked = calls.read_text().splitlines()
    assert [line for line in invoked if "-restore" in line] == []  # no writes at all
    assert len([line for line in invoked if "-save" in line]) == 2  # one read per family
    assert sorted(report["adopted_handles"]) == ["a", "b", "c"] and report["changed_handles"] == []
    assert env.probe("b", "tcp", D2, 80) == "ok"


def test_a_wait_for_the_cni_s_lock_is_counted_and_a_long_one_logged(env: Cell,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cycle_module, "LOCK_WAIT_LOGGED", 0.2)
    wire(env, "a")
    dp, log = dataplane(env.runners())
    assert dp.apply({"a": planned(env, "a", "to-d1")}).families[4].lock_wait_seconds < 0.2  # nobody holds it
    held, release = threading.Event(), threading.Event()

    def cni() -> None:  # the CNI, mid-ADD, holding the lock file
        with locked(env.lock_file, timeout=5):
            held.set()
            release.wait(0.6)

    holder = threading.Thread(target=cni)
    holder.start()
    try:
        held.wait(5)
        report = dp.apply({"a": planned(env, "a", "to-d2")})
    finally:
        release.set()
        holder.join()
    assert report.changed == ("a",) and report.families[4].lock_wait_seconds >= 0.2
    assert [e["version"] for e in log_events(log, "iptables-lock-waited")] == [4]
    assert env.probe("a", "tcp", D2, 80) == "ok"


def _with_bad_rule(good: ContainerChains, argv: tuple[str, ...]) -> ContainerChains:
    asg = good.v4.asg
    return replace(good, v4=replace(good.v4, asg=Chain(asg.name, (*asg.rules[:2], argv, *asg.rules[2:]))))


@pytest.mark.parametrize("bad_rule", [("-m", "nosuchmatch", "-j", "ACCEPT"), ("-j", "nosuchchain")],
                         ids=["unknown-match", "missing-jump-target"])
def test_one_bad_container_does_not_block_the_others(env: Cell, bad_rule: tuple[str, ...]) -> None:
    wire(env, "a", "b", "c")
    dp, log = dataplane(env.runners())
    desired = {h: planned(env, h, "to-d1") for h in ("a", "b", "c")}
    assert dp.apply(desired).ok
    changed = {**desired, "a": _with_bad_rule(planned(env, "a", "to-d2"), bad_rule),
               "b": planned(env, "b", "to-d2"), "c": planned(env, "c", "to-d2")}

    report = dp.apply(changed)

    assert report.changed == ("b", "c") and list(report.failed) == ["a"]
    assert env.probe("b", "tcp", D2, 80) == "ok" and env.probe("c", "tcp", D2, 80) == "ok"
    assert env.probe("a", "tcp", D1, 80) == "ok" and env.probe("a", "tcp", D2, 80) == "refused"  # previous rules
    assert bad_rule[1] in report.failed["a"]  # the kernel's reason, e.g. "Couldn't load match `nosuchmatch'"
    assert any(">" in e["context"] for e in log_events(log, "restore-refused"))  # the numbered failing line
    retry = dp.apply(changed)  # retried next cycle (and still refused), the others untouched
    assert list(retry.failed) == ["a"] and not retry.changes


def test_a_parent_that_vanished_is_skipped_and_the_rest_applies(env: Cell) -> None:
    wire(env, "a", "b")
    dp, _ = dataplane(env.runners())
    desired = {"a": planned(env, "a", "to-d1"), "b": planned(env, "b", "to-d1")}
    assert dp.apply(desired).ok
    env.unhook("a", versions=(4,))  # behind the agent's back

    report = dp.apply({"a": planned(env, "a", "to-d2"), "b": planned(env, "b", "to-d2")})

    assert report.changed == ("b",) and "does not exist" in report.skipped["a"] and report.reread
    assert not env.exists(4, chains.netout_chain_name("a"))  # never re-created by the agent
    assert env.probe("b", "tcp", D2, 80) == "ok"
