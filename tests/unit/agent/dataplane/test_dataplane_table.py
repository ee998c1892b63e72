"""Desired vs kernel: what is left alone, adopted, written or skipped, and what it costs."""

from __future__ import annotations

from dynamic_asgs.agent.dataplane.payload import Write
from dynamic_asgs.agent.dataplane.table import Applied, KernelTable, classify, family_targets, same_content
from dynamic_asgs.asg.translate import ChainSettings, FamilyChains, GroupIndex
from dynamic_asgs.iptables.fake import FakeRunner
from dynamic_asgs.iptables.render import Renderer, content_hash
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


def test_an_unchanged_plan_costs_no_hashing_even_as_a_new_object() -> None:
    old = family("a")
    kernel = kernel_with(old)
    applied = {"a": Applied(old, content_hash(old), 1.0, adopted=False)}
    renderer = CountingRenderer()
    out = classify(kernel, applied, {"a": family("a")}, renderer=renderer, now=2.0)
    assert out.unchanged == 1 and not out.writes and renderer.digests == 0
    assert applied["a"].at == 1.0  # unchanged keeps the time it was enforced since


def test_adopt_write_force_skip_and_scope() -> None:
    right, changed = family("a"), family("b", "t")
    kernel = kernel_with(right, family("b"), parents=("netout--c", "netout--e"))
    kernel.fresh = False
    applied: dict[str, Applied] = {}
    wanted = {"a": right, "b": changed, "c": family("c"), "d": family("d"), "e": family("e")}
    kernel.missing.add("netout--d")
    out = classify(kernel, applied, wanted, renderer=Renderer(), now=5.0, scope={"b", "c", "d"})
    assert out.adopted == ["a"] and applied["a"].adopted and applied["a"].at == 5.0
    assert [w.handle for w in out.writes] == ["b", "c"] and out.pending == ["e"]
    assert list(out.skipped) == ["d"]
    forced = classify(kernel, applied, {"a": right, "d": family("d")}, renderer=Renderer(), now=6.0,
                      force={"a", "d"})
    assert [w.handle for w in forced.writes] == ["a", "d"]  # a forced sync tries even a parent believed missing


def test_a_fresh_read_makes_absent_parents_known_missing() -> None:
    kernel = kernel_with()
    out = classify(kernel, {}, {"x": family("x")}, renderer=Renderer(), now=0.0, force={"x"})
    assert list(out.skipped) == ["x"] and "netout--x" in kernel.missing


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
