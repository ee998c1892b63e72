"""Desired vs kernel: what is left alone, adopted, written or skipped, and what it costs."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from dynamic_asgs.agent.dataplane.payload import Write
from dynamic_asgs.agent.dataplane.settle import Settler, SettleSettings
from dynamic_asgs.agent.dataplane.table import (
    Applied,
    Classified,
    Context,
    KernelTable,
    Parent,
    classify,
    family_targets,
    same_content,
)
from dynamic_asgs.asg.translate import ChainSettings, FamilyChains, GroupIndex
from dynamic_asgs.iptables.fake import FakeRunner
from dynamic_asgs.iptables.render import Renderer, content_hash, family_lines
from support.plans import container, groups_for, plan

INDEX = GroupIndex(groups_for({"s": [{"protocol": "tcp", "destination": "10.0.0.1", "ports": "80", "log": True}],
                               "t": [{"protocol": "udp", "destination": "10.0.0.2", "ports": "53"}]}))


def family(handle: str, space: str = "s") -> FamilyChains:
    return plan(container(handle, space), INDEX, ChainSettings()).v4


class CountingRenderer(Renderer):
    def __init__(self) -> None:
        super().__init__()
        self.digests = 0

    def digest(self, family: FamilyChains) -> str:
        self.digests += 1
        return super().digest(family)


def kernel_with(*families: FamilyChains, parents: tuple[str, ...] = ()) -> KernelTable:
    fake = FakeRunner()
    for name in parents:
        fake.table.create_chain(name)
    kernel = KernelTable(fake.save())
    kernel.commit([Write(f.asg.name, f, content_hash(f)) for f in families], (), ())
    return kernel


def ctx(now: float, renderer: Renderer | None = None, settler: Settler | None = None, **kw: Any) -> Context:
    return Context(renderer=renderer or Renderer(), now=now, settler=settler or Settler(), **kw)


def classify_and_record(
    kernel: KernelTable, applied: dict[str, Applied], wanted: Mapping[str, FamilyChains], context: Context
) -> Classified:
    """``classify`` changes none of its inputs; then what it found is recorded, as the cycle does."""
    before = copy.deepcopy((applied, context.settler))
    out = classify(kernel, applied, wanted, context)
    assert (applied, context.settler) == before
    out.record(applied, context.settler, context.now)
    return out


def test_an_unchanged_plan_costs_no_hashing_even_as_a_new_object() -> None:
    old = family("a")
    kernel = kernel_with(old)
    applied = {"a": Applied(old, content_hash(old), 1.0, adopted=False)}
    renderer = CountingRenderer()
    out = classify_and_record(kernel, applied, {"a": family("a")}, ctx(2.0, renderer))
    assert out.unchanged == 1 and not out.writes and renderer.digests == 0
    assert applied["a"].at == 1.0  # unchanged keeps the time it was enforced since


def test_adopt_write_force_skip_and_scope() -> None:
    right, changed = family("a"), family("b", "t")
    kernel = kernel_with(right, family("b"), parents=("netout--c", "netout--e"))
    kernel.end_cycle()
    cni = FakeRunner()
    for name in ("netout--c", "netout--e"):
        cni.table.create_chain(name)
    looked = {"netout--c", "netout--d", "netout--e"}
    kernel.observe(looked, cni.read_chains(looked))  # a look at the new containers' parents: no netout--d
    applied: dict[str, Applied] = {}
    wanted = {"a": right, "b": changed, "c": family("c"), "d": family("d"), "e": family("e")}
    out = classify_and_record(kernel, applied, wanted, ctx(5.0, scope={"b", "c", "d"}))
    assert out.adopted == ("a",) and applied["a"].adopted and applied["a"].at == 5.0
    assert [w.handle for w in out.writes] == ["b", "c"] and out.pending == ("e",)
    assert list(out.skipped) == ["d"] and "netout--d does not exist" in out.skipped["d"]
    kernel.end_cycle()
    forced = classify_and_record(kernel, applied, {"a": right, "d": family("d")}, ctx(6.0, force={"a", "d"}))
    assert [w.handle for w in forced.writes] == ["a", "d"]  # a forced sync tries a parent not looked at


def test_a_fresh_read_makes_absent_parents_wait_even_when_forced() -> None:
    kernel = kernel_with()
    settler = Settler()
    out = classify_and_record(kernel, {}, {"x": family("x")}, ctx(0.0, settler=settler, force={"x"}))
    assert list(out.skipped) == ["x"] and not out.writes and settler.looking("x")


def _parent(*rules: str) -> KernelTable:
    fake = FakeRunner()
    fake.table.create_chain("netout--n", list(rules))
    kernel = KernelTable(fake.save())
    kernel.end_cycle()
    kernel.observe({"netout--n"}, fake.read_chains({"netout--n"}))
    return kernel


REJECT = "-A netout--n -j REJECT --reject-with icmp-port-unreachable"
STATIC = ["-A netout--n -m iprange -p tcp --dst-range 10.0.0.1-10.0.0.1 -m tcp --dport 80 -j ACCEPT",
          "-A netout--n -p tcp -m state --state INVALID -j DROP",
          "-A netout--n -m state --state RELATED,ESTABLISHED -j ACCEPT", REJECT]


def test_parent_states_from_a_look() -> None:
    assert _parent().parent("netout--n") is Parent.BARE
    assert _parent(REJECT).parent("netout--n") is Parent.BARE
    assert _parent(*STATIC).parent("netout--n") is Parent.STATIC
    assert _parent(REJECT).parent("netout--other") is Parent.UNKNOWN  # not looked at in this cycle
    kernel = _parent(REJECT)
    kernel.end_cycle()
    assert kernel.parent("netout--n") is Parent.UNKNOWN  # what a past cycle saw may have changed


def test_a_new_container_waits_for_the_cni_static_rules_then_is_written_and_looked_at_once_more() -> None:
    settler = Settler(SettleSettings(settle_seconds=10, watch_seconds=60, recheck=0.5))
    n = family("n")
    bare = classify_and_record(_parent(REJECT), {}, {"n": n}, ctx(100.0, settler=settler))
    assert not bare.writes and "still setting up" in bare.skipped["n"] and settler.looking("n")
    assert not settler.due("n", 100.2) and settler.due("n", 100.5)
    done = classify_and_record(_parent(*STATIC), {}, {"n": n}, ctx(101.0, settler=settler))
    assert [w.handle for w in done.writes] == ["n"] and done.watch == {"n": False}  # once more


def test_a_bare_parent_is_written_after_the_settle_time_and_watched() -> None:
    settler = Settler(SettleSettings(settle_seconds=10, watch_seconds=60, recheck=0.5))
    n = family("n")
    assert not classify_and_record(_parent(REJECT), {}, {"n": n}, ctx(100.0, settler=settler)).writes
    late = classify_and_record(_parent(REJECT), {}, {"n": n}, ctx(110.0, settler=settler))
    assert [w.handle for w in late.writes] == ["n"] and late.watch == {"n": True}


def test_waiting_backs_off_after_the_settle_window() -> None:
    settler = Settler(SettleSettings(settle_seconds=1, watch_seconds=1, recheck=0.5, max_recheck=8))
    times = []
    now = 0.0
    for _ in range(12):
        settler.wait("x", now, "absent")
        times.append(settler.waiting["x"].next_check - now)
        now = settler.waiting["x"].next_check
    assert times[:4] == [0.5] * 4 and times[-1] == 8 and times == sorted(times)


def test_an_edit_in_place_is_drift_once_the_fingerprint_is_known() -> None:
    a = family("a")
    fake = FakeRunner()
    fake.table.create_chain("netout--a", [REJECT.replace("netout--n", "netout--a")])
    fake.restore(["*filter", *family_lines(a), "COMMIT"])
    applied: dict[str, Applied] = {}
    first = classify_and_record(KernelTable(fake.save()), applied, {"a": a}, ctx(1.0))
    assert first.adopted == ("a",) and first.learned == ("a",) and applied["a"].fingerprints
    again = classify_and_record(KernelTable(fake.save()), applied, {"a": a}, ctx(2.0))
    assert again.unchanged == 1 and not again.drifted
    rules = fake.table.rules("asg-a")
    widened = [r.replace("10.0.0.1-10.0.0.1", "0.0.0.0-255.255.255.255") for r in rules]
    assert widened != rules
    fake.table.chains["asg-a"] = widened  # same first rule, same count: only the text differs
    drifted = classify_and_record(KernelTable(fake.save()), applied, {"a": a}, ctx(3.0))
    assert "asg-a was edited in place" in drifted.drifted["a"] and [w.handle for w in drifted.writes] == ["a"]


def test_kernel_commit_tracks_references() -> None:
    a = family("a")
    kernel = kernel_with(a)
    assert kernel.referrers["asg-a"] == {"netout--a"} and kernel.referrers["netout--a--log"] == {"asg-a"}
    assert family_targets(a) == {"asg-a": ("netout--a--log",), "netout--a": ("asg-a",), "netout--a--log": ()}
    b = family("a", "t")
    kernel.commit([Write("a", b, content_hash(b))], (), ("netout--a--log",))
    assert "netout--a--log" not in kernel.referrers and "netout--a--log" not in kernel.chains
    kernel.commit((), ("netout--a",), ("asg-a",))
    assert kernel.referrers == {} and kernel.info["netout--a"].rules == 1


def test_same_content() -> None:
    assert same_content(family("a"), family("a"))
    assert not same_content(family("a"), family("a", "t")) and not same_content(family("a"), family("b"))
