"""The dataplane against fake iptables: the resulting tables, cycle after cycle."""

from __future__ import annotations

from typing import Any

import pytest
from fakecell import FakeCell

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg.translate import ChainSettings, ContainerChains, GroupIndex
from dynamic_asgs.iptables.fake import Fault
from dynamic_asgs.iptables.runner import RestoreStats
from dynamic_asgs.iptables.saved import SavedTable
from dynamic_asgs.lager import Logger
from support.plans import container, dataplane, groups_for, log_events, plan

SPACES: dict[str, list[dict[str, Any]]] = {
    "one": [{"protocol": "tcp", "destination": "10.0.0.1", "ports": "80"}],
    "two": [{"protocol": "tcp", "destination": "10.0.0.2", "ports": "80-90"},
            {"protocol": "udp", "destination": "10.0.0.0/24", "ports": "53"}],
    "logged": [{"protocol": "all", "destination": "10.0.0.3", "log": True}],
    "dual": [{"protocol": "tcp", "destination": "10.0.0.4", "ports": "443"},
             {"protocol": "tcp", "destination": "fd00::4", "ports": "443"}],
}
INDEX = GroupIndex(groups_for(SPACES))


def planned(handle: str, space: str, settings: ChainSettings | None = None) -> ContainerChains:
    return plan(container(handle, space), INDEX, settings)


@pytest.fixture
def cell() -> FakeCell:
    fake = FakeCell()
    for handle in ("a", "b", "c"):
        fake.create(handle)
    return fake


def test_nothing_touches_the_kernel_before_apply() -> None:
    class Refusing:
        version = 4

        def save(self) -> SavedTable:
            raise AssertionError("read before apply()")

        def restore(self, payload: Any) -> RestoreStats:
            raise AssertionError("write before apply()")

    dp = Dataplane(runners={4: Refusing()}, logger=Logger("t"))
    assert dp.state() == {} and dp.kernel(4) is None
    dp.invalidate()


def test_first_apply_writes_every_container_in_one_commit_and_the_second_sends_nothing(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    desired = {"a": planned("a", "one"), "b": planned("b", "two"), "c": planned("c", "dual")}
    report = dp.apply(desired)
    assert report.ok and report.changed == ("a", "b", "c") and report.reread
    assert report.families[4].commits == 1 and report.families[6].commits == 1
    assert all(cell.holds(p) for p in desired.values())
    assert cell.rules(6, "asg-a") == []  # no IPv6 rules: no IPv6 chain
    restores, saves = cell.restores(), cell.saves()

    again = dp.apply({h: planned(h, s) for h, s in (("a", "one"), ("b", "two"), ("c", "dual"))})  # new objects
    assert again.unchanged == 3 and not again.changes and not again.reread
    assert (cell.restores(), cell.saves()) == (restores, saves)


def test_a_change_writes_only_the_changed_container(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    desired = {"a": planned("a", "one"), "b": planned("b", "one")}
    dp.apply(desired)
    b_rules = cell.rules(4, "asg-b")
    report = dp.apply({**desired, "a": planned("a", "two")})
    assert report.changed == ("a",) and report.unchanged == 1
    assert cell.holds(planned("a", "two")) and cell.rules(4, "asg-b") == b_rules
    last = cell.runners[4].payloads[-1]
    assert not any("-b" in line for line in last)  # b is not in the transaction at all
    change = report.changes[0]
    assert (change.old_rules, change.new_rules) == (1, 2) and change.old_digest != change.new_digest


def test_a_restarted_dataplane_adopts_what_is_right_and_rewrites_what_is_not(cell: FakeCell) -> None:
    dataplane(cell.runners)[0].apply({"a": planned("a", "one"), "b": planned("b", "one")})
    cell.runners[4].table.load(["-A asg-b -j ACCEPT"])  # someone appended a rule behind our back
    restores = cell.restores()
    dp, _ = dataplane(cell.runners, clock=lambda: 1000.0)
    report = dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    assert report.adopted == ("a",) and report.changed == ("b",) and cell.restores() == restores + 1
    assert cell.holds(planned("b", "one"))
    state = dp.state()
    assert state["a"].families[4].adopted and not state["b"].families[4].adopted
    assert state["a"].rule_count == 1 and state["a"].applied_at == 1000.0


def test_invalidate_makes_the_next_cycle_read_the_table_again(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one")})
    cell.runners[4].table.load(["-F asg-a"])
    assert not dp.apply({"a": planned("a", "one")}).changes  # the cache does not know
    dp.invalidate()
    report = dp.apply({"a": planned("a", "one")})
    assert report.reread and report.changed == ("a",) and cell.holds(planned("a", "one"))


def test_missing_parents_are_skipped_once_logged_and_never_created(cell: FakeCell) -> None:
    dp, log = dataplane(cell.runners)
    desired = {"a": planned("a", "one"), "x": planned("x", "one")}
    report = dp.apply(desired)
    assert list(report.skipped) == ["x"] and "netout--x does not exist" in report.skipped["x"]
    restores = cell.restores()
    assert "x" in dp.apply(desired).skipped and cell.restores() == restores  # known missing: not even tried
    assert not cell.runners[4].table.exists("netout--x") and not cell.runners[4].table.exists("asg-x")
    assert [e["handle"] for e in log_events(log, "container-skipped")] == ["x"]  # once, not every cycle
    cell.create("x")
    forced = dp.apply_one(desired["x"])
    assert forced.changed == ("x",) and cell.holds(desired["x"])
    assert not dp.apply(desired).changes


def test_a_parent_created_after_the_read_is_written_without_reading_again(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one")})
    cell.create("late")
    report = dp.apply({"a": planned("a", "one"), "late": planned("late", "two")})
    assert report.changed == ("late",) and not report.reread and cell.holds(planned("late", "two"))


def test_a_parent_that_vanished_is_skipped_after_a_fresh_read_and_the_rest_applies(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    cell.delete("a")
    report = dp.apply({"a": planned("a", "two"), "b": planned("b", "two")})
    assert report.changed == ("b",) and "does not exist" in report.skipped["a"] and report.reread
    assert not cell.runners[4].table.exists("netout--a") and cell.holds(planned("b", "two"))
    assert not cell.dangling_jumps()


def test_a_refused_container_keeps_its_rules_and_the_others_apply(cell: FakeCell) -> None:
    dp, log = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    # a's final REJECT: a line of its own chain in either layout
    cell.runners[4].inject(Fault(pattern=r"^-A asg-a .*REJECT", message="kernel says no", times=None))
    report = dp.apply({"a": planned("a", "two"), "b": planned("b", "two")})
    assert report.changed == ("b",) and "kernel says no" in report.failed["a"] and not report.reread
    assert cell.holds(planned("a", "one")) and cell.holds(planned("b", "two"))
    refused = log_events(log, "restore-refused")[-1]
    assert refused["owner"] == "write" and refused["name"] == "a" and ">" in refused["context"]
    again = dp.apply({"a": planned("a", "two"), "b": planned("b", "two")})
    assert list(again.failed) == ["a"] and again.families[4].restores == 1  # retried, others not resent


@pytest.mark.parametrize("fault", [Fault(pattern=r"^-A asg-b ", at_commit=True, times=None),
                                   Fault(pattern=r"^-A asg-b ", unnumbered=True, times=None)],
                         ids=["at-commit", "no-line"])
def test_an_unattributed_refusal_is_bisected_down_to_the_culprit(cell: FakeCell, fault: Fault) -> None:
    for handle in ("d", "e", "f"):
        cell.create(handle)
    dp, _ = dataplane(cell.runners)
    handles = ["a", "b", "c", "d", "e", "f"]
    dp.apply({h: planned(h, "one") for h in handles})
    cell.runners[4].inject(fault)
    report = dp.apply({h: planned(h, "two") for h in handles})
    assert list(report.failed) == ["b"] and report.changed == ("a", "c", "d", "e", "f") and report.reread
    assert cell.holds(planned("b", "one")) and all(cell.holds(planned(h, "two")) for h in handles if h != "b")


def test_a_transient_refusal_is_retried_after_a_fresh_read(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one")})
    cell.runners[4].inject(Fault(unnumbered=True, times=1))
    report = dp.apply({"a": planned("a", "two")})
    assert report.ok and report.changed == ("a",) and report.reread and report.families[4].restores == 2


def test_a_lock_timeout_changes_nothing_and_keeps_the_cache(cell: FakeCell) -> None:
    dp, log = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one")})
    cell.runners[4].inject(Fault(lock_timeout=True))
    report = dp.apply({"a": planned("a", "two")})
    assert not report.ok and "fake lock" in (report.families[4].error or "") and "a" in report.failed
    assert cell.holds(planned("a", "one")) and log_events(log, "iptables-failed")
    retry = dp.apply({"a": planned("a", "two")})
    assert retry.ok and not retry.reread and cell.holds(planned("a", "two"))


def test_every_cache_drop_is_logged_with_its_reason(cell: FakeCell) -> None:
    dp, log = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    cell.delete("a")
    dp.apply({"a": planned("a", "two"), "b": planned("b", "two")})  # the cache believed netout--a existed
    dp.invalidate("verification")
    dp.invalidate("again")  # nothing cached: nothing to drop
    drops = [(e["version"], e["reason"]) for e in log_events(log, "kernel-cache-invalidated")]
    assert len(drops) == 3 and "netout--a" in drops[0][1] and drops[0][0] == 4
    assert sorted(drops[1:]) == [(4, "verification"), (6, "verification")]


def test_restores_are_bounded_and_what_is_left_is_retried_next_cycle(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners, max_restores=3)
    dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    cell.runners[4].inject(Fault(unnumbered=True, times=None))
    report = dp.apply({"a": planned("a", "two"), "b": planned("b", "two")})
    assert report.families[4].restores == 3 and set(report.failed) == {"a", "b"}
    assert "retried next cycle" in report.failed["b"]  # a was isolated first, b left when the budget ran out
    cell.runners[4].faults.clear()
    assert dp.apply({"a": planned("a", "two"), "b": planned("b", "two")}).changed == ("a", "b")


def test_orphans_are_deleted_with_their_helpers_and_parents_fail_closed(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "logged"), "b": planned("b", "dual")})
    assert cell.runners[4].table.exists("netout--a--log")
    shared = {v: tuple(c.name for c in p.families[i].shared) if len(p.families) > i else ()
              for v, i, p in ((4, 0, planned("b", "dual")), (6, 1, planned("b", "dual")))}
    report = dp.apply({})
    assert report.deleted == {4: tuple(sorted(("asg-a", "asg-b", "netout--a--log", *shared[4]))),
                              6: tuple(sorted(("asg-b", *shared[6])))}
    assert report.closed == {4: ("netout--a", "netout--b"), 6: ("netout--b",)}
    assert cell.rules(4, "netout--a") == ["-A netout--a -j REJECT --reject-with icmp-port-unreachable"]
    assert cell.owned(4) == cell.owned(6) == [] and not cell.dangling_jumps() and dp.state() == {}


def test_an_incomplete_view_deletes_nothing(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    report = dp.apply({"a": planned("a", "two")}, complete=False)
    assert report.changed == ("a",) and not report.deleted and cell.holds(planned("b", "one"))
    assert set(dp.state()) == {"a", "b"}


def test_a_container_losing_its_log_rules_loses_its_log_chain_in_the_same_commit(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "logged")})
    report = dp.apply({"a": planned("a", "one")})
    assert report.deleted == {4: ("netout--a--log",)} and report.commits == 1
    assert not cell.runners[4].table.exists("netout--a--log") and cell.holds(planned("a", "one"))


def test_a_container_losing_its_ipv6_rules_is_closed_on_ipv6(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "dual")})
    before = planned("a", "dual")
    report = dp.apply({"a": planned("a", "one")})
    assert report.deleted.get(6) == tuple(sorted(("asg-a", *(c.name for c in before.families[1].shared))))
    assert report.deleted.get(4, ()) == tuple(c.name for c in before.v4.shared)  # the old shared chain goes too
    assert report.closed == {6: ("netout--a",)}
    assert cell.rules(6, "netout--a") == ["-A netout--a -j REJECT --reject-with icmp6-port-unreachable"]
    assert set(dp.state()["a"].families) == {4}


def test_go_candidates_and_foreign_references(cell: FakeCell) -> None:
    t4 = cell.runners[4].table
    t4.load([":casg-a - [0:0]", "-A casg-a -j ACCEPT", "-I netout--a 1 -j casg-a",
             ":casg-old - [0:0]", ":asg-kept - [0:0]", ":other - [0:0]", "-A other -j asg-kept"])
    cell.runners[4].inject(Fault(pattern=r"^-A asg-b ", times=None))
    dp, log = dataplane(cell.runners)
    t4.load([":casg-b - [0:0]", "-I netout--b 1 -j casg-b"])
    report = dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    assert set(report.deleted[4]) == {"casg-a", "casg-old"} and list(report.failed) == ["b"]
    assert "asg-kept" in report.deferred and "not ours" in report.deferred["asg-kept"]
    assert "casg-b" in report.deferred and "not written" in report.deferred["casg-b"]  # never close b's parent
    assert t4.rules("netout--b")[0] == "-A netout--b -j casg-b" and t4.exists("asg-kept")
    assert {e["chain"] for e in log_events(log, "orphan-deferred")} == {"asg-kept", "casg-b"}


def test_apply_one_writes_its_container_even_when_it_looks_right_and_nothing_else(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    cell.runners[4].table.load(["-F netout--a", "-A netout--a -j REJECT"])  # the CNI recreated the parent
    report = dp.apply_one(planned("a", "one"))
    assert report.changed == ("a",) and cell.holds(planned("a", "one"))
    assert all("-b" not in line for line in cell.runners[4].payloads[-1])


def test_apply_one_before_any_cycle_reads_once_then_writes(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    report = dp.apply_one(planned("a", "dual"))
    assert report.reread and report.changed == ("a",) and cell.holds(planned("a", "dual"))


def test_remove_orphans_keeps_live_containers(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one"), "b": planned("b", "one"), "c": planned("c", "one")})
    cell.delete("c")
    report = dp.remove_orphans(["a"])
    assert report.deleted == {4: ("asg-b", "asg-c")} and report.closed == {4: ("netout--b",)}
    assert cell.holds(planned("a", "one")) and set(dp.state()) == {"a"}


def test_without_an_ipv6_runner_ipv6_rules_are_left_alone(cell: FakeCell) -> None:
    dp, _ = dataplane({4: cell.runners[4]})
    assert dp.apply({"a": planned("a", "dual")}).ok
    assert cell.holds_family(planned("a", "dual").v4) and cell.runners[6].restores == 0


def test_runners_must_be_families() -> None:
    with pytest.raises(ValueError, match="runners"):
        Dataplane(runners={}, logger=Logger("t"))
