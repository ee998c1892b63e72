"""Shared chains (issue 16): created with their first user, swept with their last, never changed in place."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakecell import FakeCell

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg import chains
from dynamic_asgs.asg.model import SecurityGroup
from dynamic_asgs.asg.parse import parse_groups_document
from dynamic_asgs.asg.translate import ChainLayout, ChainSettings, ContainerChains, GroupIndex
from dynamic_asgs.iptables.fake import Fault
from support.plans import container, dataplane, log_events, plan

GLOBAL = [{"protocol": "udp", "destination": "10.9.0.53", "ports": "53"},
          {"protocol": "tcp", "destination": "10.9.0.0/24", "ports": "443"}]
SPACES: dict[str, list[dict[str, Any]]] = {
    "one": [{"protocol": "tcp", "destination": "10.1.0.1", "ports": "80"}],
    "two": [{"protocol": "tcp", "destination": "10.2.0.1", "ports": "80-90"},
            {"protocol": "all", "destination": "10.2.0.9", "log": True}],
}


def groups(spaces: dict[str, list[dict[str, Any]]] = SPACES) -> list[SecurityGroup]:
    doc = {"security_groups": [
        {"guid": "sg-global", "name": "global", "rules": json.dumps(GLOBAL), "staging_default": False,
         "running_default": True, "staging_space_guids": [], "running_space_guids": []},
        *({"guid": f"sg-{space}", "name": space, "rules": json.dumps(rules), "staging_default": False,
           "running_default": False, "staging_space_guids": [], "running_space_guids": [space]}
          for space, rules in spaces.items())]}
    return parse_groups_document(doc)


INDEX = GroupIndex(groups())
SHARED = ChainSettings(layout=ChainLayout.SHARED)


@pytest.fixture(params=[ChainLayout.SHARED], ids=str)
def layout(request: pytest.FixtureRequest) -> ChainLayout:
    """These tests are about the shared layout alone (overrides the directory's both-layouts fixture)."""
    return ChainLayout(request.param)


def planned(handle: str, space: str, index: GroupIndex = INDEX, settings: ChainSettings = SHARED) -> ContainerChains:
    return plan(container(handle, space), index, settings)


def shared_in(cell: FakeCell, version: int = 4) -> set[str]:
    return {c for c in cell.runners[version].table.user_chains() if chains.is_shared_chain(c)}


@pytest.fixture
def cell() -> FakeCell:
    fake = FakeCell()
    for handle in ("a", "b", "c", "d"):
        fake.create(handle)
    return fake


def test_containers_of_one_space_share_its_chain_and_the_global_one(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    desired = {h: planned(h, "one") for h in "abc"}
    assert dp.apply(desired).commits == 1
    a = desired["a"].v4
    assert [c.name for c in a.shared] == [c.name for c in desired["c"].v4.shared] and len(a.shared) == 2
    assert shared_in(cell) == {c.name for c in a.shared} and cell.holds(desired["a"])
    assert all(cell.rules(4, c)[0].count("dasg:" + chains.shared_chain_digest(c)) == 1 for c in shared_in(cell))
    # one copy of the rules, whatever the number of containers
    hooks_and_d = 4 + 1  # the CNI's FORWARD hooks, and d's parent (its lone REJECT)
    assert cell.runners[4].table.rule_count() == 3 * (len(a.asg.rules) + 2) + 3 + hooks_and_d
    assert a.accept_count == 3 and dp.state()["a"].rule_count == 3  # what operators see is unchanged


def test_a_new_user_does_not_rewrite_a_shared_chain_and_the_last_one_takes_it_away(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one")})
    cell.runners[4].payloads.clear()
    dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    (payload,) = cell.runners[4].payloads
    assert not any(line.startswith((":asgs-", "-A asgs-")) for line in payload)  # jumps only
    report = dp.apply({"b": planned("b", "one")})
    assert report.deleted == {4: ("asg-a",)} and shared_in(cell) == {c.name for c in planned("b", "one").v4.shared}
    report = dp.apply({})
    assert report.commits == 1 and shared_in(cell) == set() and not cell.dangling_jumps()
    assert set(report.deleted[4]) == {"asg-b", *(c.name for c in planned("b", "one").v4.shared)}


def test_a_changed_group_gets_a_new_chain_its_users_switch_and_the_old_goes_in_one_commit(cell: FakeCell) -> None:
    dp, _ = dataplane(cell.runners)
    before = {h: planned(h, s) for h, s in (("a", "one"), ("b", "one"), ("c", "two"))}
    dp.apply(before)
    old = {c.name for c in before["a"].v4.shared} - {c.name for c in before["c"].v4.shared}
    edited = GroupIndex(groups({**SPACES, "one": [{"protocol": "tcp", "destination": "10.1.0.1", "ports": "8080"}]}))
    after = {h: planned(h, s, edited) for h, s in (("a", "one"), ("b", "one"), ("c", "two"))}
    new = {c.name for c in after["a"].v4.shared} - {c.name for c in before["a"].v4.shared}
    cell.runners[4].payloads.clear()
    report = dp.apply(after)
    assert report.commits == 1 and report.changed == ("a", "b") and len(old) == len(new) == 1
    assert set(report.deleted[4]) == old and shared_in(cell) >= new and not shared_in(cell) & old
    (payload,) = cell.runners[4].payloads
    assert sum(line.startswith(f":{next(iter(new))} ") for line in payload) == 1  # created once for both users
    assert all(cell.holds(p) for p in after.values())


def test_an_edited_shared_chain_is_repaired_and_every_user_reported(cell: FakeCell) -> None:
    dp, log = dataplane(cell.runners)
    desired = {h: planned(h, "one") for h in "abc"}
    dp.apply(desired)
    dp.invalidate()
    assert dp.apply(desired).families[4].learned == 3
    space_chain = desired["a"].v4.shared[0].name
    table = cell.runners[4].table
    table.chains[space_chain] = [r.replace("10.1.0.1-10.1.0.1", "0.0.0.0-255.255.255.255")
                                 for r in table.rules(space_chain)]
    dp.invalidate()
    report = dp.apply(desired)
    assert sorted(report.drifted) == ["a", "b", "c"] and all(space_chain in r for r in report.drifted.values())
    assert report.commits == 1 and all(cell.holds(p) for p in desired.values())
    assert len(log_events(log, "chain-drift-repaired")) == 3


def test_a_restarted_agent_adopts_shared_chains_and_writes_nothing(cell: FakeCell) -> None:
    desired = {h: planned(h, s) for h, s in (("a", "one"), ("b", "one"), ("c", "two"))}
    first, _ = dataplane(cell.runners)
    first.apply(desired)
    restores = cell.restores()
    restarted = Dataplane(runners=cell.runners, logger=first._log)
    report = restarted.apply(desired)
    assert report.adopted == ("a", "b", "c") and cell.restores() == restores


def test_a_refused_shared_chain_fails_its_users_and_the_others_apply(cell: FakeCell) -> None:
    dp, log = dataplane(cell.runners)
    bad = planned("a", "two").v4.shared[0].name
    cell.runners[4].inject(Fault(pattern=f"^-A {bad} ", message="kernel says no", times=None))
    report = dp.apply({"a": planned("a", "two"), "b": planned("b", "two"), "c": planned("c", "one")})
    assert sorted(report.failed) == ["a", "b"] and report.changed == ("c",) and cell.holds(planned("c", "one"))
    assert bad not in shared_in(cell) and log_events(log, "restore-refused")[0]["owner"] == "shared"


def test_a_jump_to_a_shared_chain_the_cache_wrongly_believes_in_drops_the_cache(cell: FakeCell) -> None:
    dp, log = dataplane(cell.runners)
    dp.apply({"a": planned("a", "one")})
    cell.runners[4].inject(Fault(pattern=r"^-A asg-b -j asgs-", message="Couldn't load target", times=1))
    report = dp.apply({"a": planned("a", "one"), "b": planned("b", "one")})
    assert "Couldn't load target" in report.failed["b"]
    assert [e["reason"] for e in log_events(log, "kernel-cache-invalidated") if "shared chain" in e["reason"]]
    assert dp.apply({"a": planned("a", "one"), "b": planned("b", "one")}).changed == ("b",)


def test_rules_that_log_stay_in_the_container_chain_before_the_jumps(cell: FakeCell) -> None:
    family = planned("a", "two").v4
    rules = [" ".join(r) for r in family.asg.rules]
    logged = next(i for i, r in enumerate(rules) if "-g netout--a--log" in r)
    assert logged < family.shared_at and all(r.startswith("-j asgs-") for r in rules[family.shared_at:-1])
    assert not any("10.2.0.9" in " ".join(r) for c in family.shared for r in c.rules)
    logging = planned("a", "two", settings=ChainSettings(layout=ChainLayout.SHARED, asg_logging=True)).v4
    assert logging.shared == () and logging.asg.rules == plan(
        container("a", "two"), INDEX, ChainSettings(asg_logging=True)).v4.asg.rules  # all per container


@pytest.mark.parametrize(("start", "end"), [(ChainLayout.PER_CONTAINER, ChainLayout.SHARED),
                                            (ChainLayout.SHARED, ChainLayout.PER_CONTAINER)], ids=str)
def test_switching_layouts_converges_in_one_commit(cell: FakeCell, start: ChainLayout, end: ChainLayout) -> None:
    placed = (("a", "one"), ("b", "one"), ("c", "two"))
    dp, _ = dataplane(cell.runners)
    dp.apply({h: planned(h, s, settings=ChainSettings(layout=start)) for h, s in placed})
    after = {h: planned(h, s, settings=ChainSettings(layout=end)) for h, s in placed}
    report = dp.apply(after)
    assert report.commits == 1 and report.changed == ("a", "b", "c") and report.ok
    assert all(cell.holds(p) for p in after.values()) and not cell.dangling_jumps()
    wanted = {c.name for p in after.values() for c in p.v4.shared}
    assert shared_in(cell) == wanted and bool(wanted) is (end is ChainLayout.SHARED)
    assert dp.apply(after).commits == 0
