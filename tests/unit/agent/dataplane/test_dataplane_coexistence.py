"""The dataplane beside a CNI that does not call it, colliding chain names, drift, refused tokens (fake iptables)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakecell import FakeCell

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.agent.dataplane.settle import SettleSettings
from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import ChainSettings, ConnLimit, ContainerChains, GroupIndex
from dynamic_asgs.lager import Logger
from support.plans import container, dataplane, groups_for, log_events, plan

INDEX = GroupIndex(groups_for({"one": [{"protocol": "tcp", "destination": "10.0.0.1", "ports": "80"}],
                               "two": [{"protocol": "tcp", "destination": "10.0.0.2", "ports": "443"}]}))
STATIC = ["-m iprange -p tcp --dst-range 10.9.9.9-10.9.9.9 -m tcp --dport 22 -j ACCEPT",
          "-p tcp -m state --state INVALID -j DROP", "-m state --state RELATED,ESTABLISHED -j ACCEPT"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def planned(handle: str, space: str = "one") -> ContainerChains:
    return plan(container(handle, space), INDEX)


def insert_static(cell: FakeCell, handle: str) -> None:
    """What cni-wrapper-plugin does on a 405: Garden's rules inserted at position 1, in one restore."""
    parent = chains.netout_chain_name(handle)
    for rule in reversed(STATIC):
        cell.runners[4].table.load([f"-I {parent} 1 {rule}"])


def parent_rules(cell: FakeCell, handle: str) -> list[str]:
    return cell.rules(4, chains.netout_chain_name(handle))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def settling(cell: FakeCell, clock: Clock) -> Dataplane:
    dp, _ = dataplane(cell.runners, clock=clock,
                      settle=SettleSettings(settle_seconds=10, watch_seconds=60, recheck=0.5, max_recheck=60))
    return dp


def test_a_new_container_is_written_once_the_cni_inserted_its_static_rules_never_below_them(clock: Clock) -> None:
    cell = FakeCell()
    dp = settling(cell, clock)
    dp.apply({})  # the agent runs; then a container is created: the store entry comes first
    desired = {"n": planned("n")}
    first = dp.apply(desired)
    assert "does not exist" in first.skipped["n"] and dp.looking() == {"n"}
    clock.now += 0.5
    cell.create("n")  # the CNI's chains: a lone REJECT
    bare = dp.settle(desired)
    assert "still setting up" in bare.skipped["n"] and not bare.changes
    clock.now += 0.5
    insert_static(cell, "n")  # the CNI is done
    done = dp.settle(desired)
    assert done.changed == ("n",) and cell.holds(desired["n"])
    assert not any("RELATED,ESTABLISHED" in r for r in parent_rules(cell, "n"))  # the static rules are gone
    clock.now += 0.5
    verified = dp.settle(desired)
    assert not verified.changes and dp.looking() == set() and dp.next_look() is None  # looked at once more


def test_rules_the_cni_inserts_after_a_timed_out_wait_are_replaced_at_the_next_look(clock: Clock) -> None:
    cell = FakeCell()
    dp = settling(cell, clock)
    dp.apply({})
    cell.create("n")
    desired = {"n": planned("n")}
    assert not dp.apply(desired).changes
    clock.now += 10
    written = dp.settle(desired)
    assert written.changed == ("n",) and dp.looking() == {"n"}  # written, and watched
    insert_static(cell, "n")  # a slow CNI: static rules above our jump
    assert any("RELATED,ESTABLISHED" in r for r in parent_rules(cell, "n"))
    clock.now += 0.5
    again = dp.settle(desired)
    assert again.changed == ("n",) and cell.holds(desired["n"])
    clock.now += 0.5
    assert not dp.settle(desired).changes and dp.looking() == set()


def test_a_waiting_container_is_never_forgotten_but_looked_at_ever_less_often(clock: Clock) -> None:
    cell = FakeCell()
    dp = settling(cell, clock)
    dp.apply({})
    desired = {"n": planned("n")}
    dp.apply(desired)
    looks = []
    for _ in range(400):  # 200 s of store-check ticks
        clock.now += 0.5
        before = cell.runners[4].reads
        dp.settle(desired)
        looks.append(cell.runners[4].reads - before)
    assert sum(looks[:140]) == 140  # every tick while the CNI may still be at work (settle + watch: 70 s)
    assert 1 <= sum(looks[-120:]) <= 2  # then doubling intervals up to the poll interval: never forgotten
    cell.create("n")
    insert_static(cell, "n")
    clock.now += 61
    assert dp.settle(desired).changed == ("n",)


def test_a_watched_container_without_a_plan_is_postponed_never_left_due(clock: Clock) -> None:
    # Its space set aside, say: the caller has no plan for it. A look left due would make the
    # agent's loop run settle passes back to back.
    cell = FakeCell()
    dp = settling(cell, clock)
    cell.create("n")
    desired = {"n": planned("n")}
    dp.apply(desired)
    clock.now += 10
    assert dp.settle(desired).changed == ("n",) and dp.looking() == {"n"}  # written after the settle time: watched
    clock.now += 0.5
    dp.settle({})
    due = dp.next_look()
    assert due is not None and due > clock.now  # postponed a recheck, still watched
    clock.now += 61
    dp.settle({})
    assert dp.looking() == set() and dp.next_look() is None  # the watch ended on time


def test_a_container_whose_chain_names_collide_with_an_enforced_one_is_refused_and_the_first_untouched() -> None:
    cell = FakeCell()
    first, second = "aaaaaaaaaaaaaaaaaaaa-1", "aaaaaaaaaaaaaaaaaaaa-2"  # same 20 characters: same asg- chain
    assert chains.asg_chain_name(first) == chains.asg_chain_name(second)
    cell.create(first)
    dp, log = dataplane(cell.runners)
    dp.apply({first: planned(first, "one")})
    before = {c: cell.rules(4, c) for c in cell.runners[4].table.user_chains()}
    report = dp.apply({first: planned(first, "one"), second: planned(second, "two")})
    assert second in report.refused and first in report.refused[second] and not report.changes
    assert {c: cell.rules(4, c) for c in cell.runners[4].table.user_chains()} == before
    assert [e["handle"] for e in log_events(log, "container-refused")] == [second]
    forced = dp.apply_one(planned(second, "two"))
    assert second in forced.refused and cell.restores() == 1


def test_after_a_restart_the_collider_the_kernel_holds_keeps_its_chains_and_the_other_is_refused() -> None:
    cell = FakeCell()
    first, second = "bbbbbbbbbbbbbbbbbbbb-1", "bbbbbbbbbbbbbbbbbbbb-2"
    cell.create(first)
    Dataplane(runners=cell.runners, logger=Logger("t")).apply({first: planned(first, "two")})
    before = cell.rules(4, chains.asg_chain_name(first))
    dp, _ = dataplane(cell.runners)  # restarted: nothing enforced yet; the store holds both, in any order
    report = dp.apply({second: planned(second, "one"), first: planned(first, "two")})
    assert report.adopted == (first,) and second in report.refused and not report.changes
    assert cell.rules(4, chains.asg_chain_name(first)) == before
    later = dp.apply({second: planned(second, "one"), first: planned(first, "one")})
    assert later.changed == (first,) and second in later.refused  # the incumbent keeps being enforced


def test_drift_while_the_agent_was_down_is_repaired_with_a_fingerprint_file(tmp_path: Path) -> None:
    cell = FakeCell()
    cell.create("a")
    kept = tmp_path / "fingerprints.json"
    dp, _ = dataplane(cell.runners, fingerprint_file=kept)
    dp.apply({"a": planned("a")})
    dp.invalidate()
    assert dp.apply({"a": planned("a")}).families[4].learned == 1 and kept.stat().st_mode & 0o777 == 0o600
    table = cell.runners[4].table
    edited = next(c for c in table.user_chains() if any("10.0.0.1-10.0.0.1" in r for r in table.rules(c)))
    assert edited == (planned("a").v4.shared[0].name if planned("a").v4.shared else "asg-a")
    table.chains[edited] = [r.replace("10.0.0.1-10.0.0.1", "0.0.0.0-255.255.255.255") for r in table.rules(edited)]
    restarted, log = dataplane(cell.runners, fingerprint_file=kept)
    report = restarted.apply({"a": planned("a")})
    assert f"{edited} was edited in place" in report.drifted["a"] and report.changed == ("a",)
    assert cell.holds(planned("a")) and log_events(log, "chain-drift-repaired")
    without, _ = dataplane(cell.runners)  # no file: an edit made while down would be learned, not found
    assert without.apply({"a": planned("a")}).adopted == ("a",)


def test_a_token_the_renderer_refuses_fails_that_container_alone() -> None:
    cell = FakeCell()
    hostile = "b;x"  # a handle that never passed the store's grammar (iptables takes it as a chain name)
    cell.create("a")
    table = cell.runners[4].table
    table.chains[chains.netout_chain_name(hostile)] = ["-j REJECT --reject-with icmp-port-unreachable"]
    dp, _ = dataplane(cell.runners)
    report = dp.apply({"a": planned("a"), hostile: planned(hostile, "two")})
    assert report.changed == ("a",) and hostile in report.failed and cell.holds(planned("a"))
    assert table.rules("INPUT") == [] and not table.exists(chains.asg_chain_name(hostile))


def test_names_only_a_chain_not_in_use_would_share_do_not_collide() -> None:
    # Rate-limit log chains keep a handle's first 12 characters; without logged
    # connection limits there is no such chain, and both containers are written.
    cell = FakeCell()
    first, second = "dasg75cdcb-c1", "dasg75cdcb-c2"
    assert chains.rate_limit_log_chain_name(first) == chains.rate_limit_log_chain_name(second)
    for handle in (first, second):
        cell.create(handle)
    dp, _ = dataplane(cell.runners)
    report = dp.apply({first: planned(first), second: planned(second)})
    assert report.changed == (first, second) and not report.refused
    logged = ChainSettings(conn_limit=ConnLimit(rate_per_sec=10, burst=20, logging=True))
    again, _ = dataplane(FakeCell().runners)
    refused = again.apply({first: plan(container(first, "one"), INDEX, logged),
                           second: plan(container(second, "one"), INDEX, logged)})
    assert set(refused.refused) == {first, second} and not refused.changes  # neither enforced yet
