"""Invariants over random histories (containers come and go, the CNI acts, restores fail, agents restart)."""

from __future__ import annotations

from typing import Any

from fakecell import FakeCell
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import ChainSettings, ContainerChains, GroupIndex
from dynamic_asgs.iptables.fake import Fault
from support.plans import container, dataplane, groups_for, plan

SPACES = {
    "one": [{"protocol": "tcp", "destination": "10.0.0.1", "ports": "80"}],
    "two": [{"protocol": "udp", "destination": "10.0.0.0/24", "ports": "53,54"}],
    "logged": [{"protocol": "all", "destination": "10.0.0.3", "log": True}],
    "dual": [{"protocol": "icmpv6", "destination": "fd00::/64", "type": 128, "code": -1}],
}
INDEX = GroupIndex(groups_for(SPACES))
HANDLES = ["a", "b", "c", "d"]

ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(HANDLES), st.sampled_from([*SPACES, "other"]), st.booleans()),
    st.tuples(st.just("remove"), st.sampled_from(HANDLES)),
    st.tuples(st.just("cni-create"), st.sampled_from(HANDLES)),
    st.tuples(st.just("cni-delete"), st.sampled_from(HANDLES)),
    st.tuples(st.just("fault"), st.sampled_from(HANDLES), st.sampled_from(["line", "commit", "none"])),
    st.tuples(st.just("force"), st.sampled_from(HANDLES)),
    st.tuples(st.just("restart"),),
), max_size=25)


def _plan(handle: str, space: str, logging: bool) -> ContainerChains:
    workload = "other" if space == "other" else "app"
    return plan(container(handle, space, workload=workload), INDEX, ChainSettings(asg_logging=logging))


def _fault(kind: str, handle: str) -> Fault:
    pattern = f"^-A {chains.asg_chain_name(handle)} "
    return Fault(pattern=pattern, at_commit=kind == "commit", unnumbered=kind == "none", times=2)


def _check(cell: FakeCell, desired: dict[str, ContainerChains], live: set[str]) -> None:
    assert not cell.dangling_jumps()
    for version, runner in cell.runners.items():
        table = runner.table
        parents = {c for c in table.user_chains() if c.startswith("netout--") and not c.endswith("-log")}
        assert parents == {chains.netout_chain_name(h) for h in live}  # never creates a parent
        families = [f for h, p in desired.items() if h in live for f in p.families if f.version == version]
        wanted = {f.asg.name for f in families} | {c.name for f in families for c in f.shared}
        assert set(cell.owned(version)) <= wanted | {chains.asg_chain_name(h) for h in desired}
        for name in cell.owned(version):  # a shared chain goes with its last user
            assert not chains.is_shared_chain(name) or table.referrers(name), name
        for handle in live:
            plan_ = desired.get(handle)
            family = None if plan_ is None else plan_.v4 if version == 4 else plan_.v6
            if family is not None:
                assert cell.holds_family(family), (version, handle)
            else:  # not wanted here: the parent alone, rejecting everything
                assert len(table.rules(chains.netout_chain_name(handle))) == 1


@settings(max_examples=60, deadline=None)
@given(history=ops)
def test_random_histories_keep_the_tables_right(history: list[tuple[Any, ...]]) -> None:
    cell = FakeCell()
    live: set[str] = set()
    desired: dict[str, ContainerChains] = {}
    dp, _ = dataplane(cell.runners)
    for op in history:
        kind = op[0]
        if kind == "set":
            desired[op[1]] = _plan(op[1], op[2], op[3])
        elif kind == "remove":
            desired.pop(op[1], None)
        elif kind == "cni-create" and op[1] not in live:
            cell.create(op[1])
            live.add(op[1])
        elif kind == "cni-delete" and op[1] in live:
            cell.delete(op[1])
            live.discard(op[1])
        elif kind == "fault":
            cell.runners[4].inject(_fault(op[2], op[1]))
        elif kind == "force" and op[1] in desired and op[1] in live:
            dp.apply_one(desired[op[1]])
        elif kind == "restart":
            dp = Dataplane(runners=cell.runners, logger=dp._log)
        dp.apply(desired)
    for runner in cell.runners.values():
        runner.faults.clear()
    dp.invalidate()  # the CNI acted behind the cache's back; the daemon re-reads periodically
    dp.apply(desired)
    _check(cell, desired, live)
    restores = cell.restores()
    second = dp.apply(desired)
    assert cell.restores() == restores and not second.changes and not second.deleted  # a second apply sends nothing
