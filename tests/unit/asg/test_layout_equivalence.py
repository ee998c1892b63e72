"""Both chain layouts give every packet the verdict the security-group model says (issue 16).

Random groups, containers, settings and packets; the tables are built by the real translator and
:class:`~dynamic_asgs.agent.dataplane.Dataplane` on fake iptables, in both families, and walked
(:mod:`dynamic_asgs.iptables.packets`). The tables are written fresh, or reached by a change (other
groups, settings and layout applied first by the same Dataplane). Packets are drawn mostly from the
rules' own destinations, ports and ICMP types (and just past them), so that many hit a rule, some a
deny network.

Rules traversed: both layouts evaluate a container's unlogged accept rules in the same order (the
default groups', then its space's), so the shared layout costs exactly one rule per shared chain
entered, unless two of its groups repeat a rule: per-container drops the repeat, each shared chain
keeps its group's copy, and a packet that reaches the repeat evaluates it twice (the last test).
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from reference_verdict import reference_verdict

from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.asg import chains
from dynamic_asgs.asg.model import Container, IPRange, PortRange, Protocol, Rule, SecurityGroup, Workload
from dynamic_asgs.asg.translate import (
    ChainLayout,
    ChainSettings,
    ConnLimit,
    ContainerChains,
    DenyNetworks,
    FamilyChains,
    GroupIndex,
    plan_container,
)
from dynamic_asgs.iptables.fake import FakeRunner, FakeTable
from dynamic_asgs.iptables.packets import Packet, Proto, State, Verdict, Walk, walk
from dynamic_asgs.lager import Logger

LAYOUTS = ("per-container", "shared")
BASE = {4: int(ipaddress.IPv4Address("10.0.0.0")), 6: int(ipaddress.IPv6Address("fd00::"))}
SPAN = 32  # rule destinations lie in BASE .. BASE + SPAN - 1 of each family
SPACES = ("s1", "s2", "s3")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DENY = {4: ("10.0.0.0/30", "10.0.0.16/28", "192.168.0.0/16"), 6: ("fd00::/126", "fd00::10/124")}


def address(version: int, offset: int) -> IPAddress:
    return ipaddress.IPv4Address(BASE[4] + offset) if version == 4 else ipaddress.IPv6Address(BASE[6] + offset)


@st.composite
def destination(draw: st.DrawFn, version: int) -> IPRange:
    lo = draw(st.integers(0, SPAN - 1))
    hi = draw(st.sampled_from([lo, min(lo + 3, SPAN - 1), SPAN - 1]))
    return IPRange(address(version, lo), address(version, hi))


@st.composite
def port_range(draw: st.DrawFn) -> PortRange:
    lo = draw(st.sampled_from([1, 2, 5, 10, 80, 65535]))
    return PortRange(lo, draw(st.sampled_from([lo, min(lo + 4, 65535), 65535])))


icmp_values = st.sampled_from([0, 3, 8, 255]) | st.integers(0, 255)


@st.composite
def rule(draw: st.DrawFn) -> Rule:
    protocol = draw(st.sampled_from(list(Protocol)))
    if protocol is Protocol.ICMP:
        versions = [4]
    elif protocol is Protocol.ICMPV6:
        versions = [6]
    else:
        versions = draw(st.sampled_from([[4], [4], [6], [4, 6]]))
    dests = tuple(draw(destination(v)) for v in versions for _ in range(draw(st.integers(1, 2))))
    ports: tuple[PortRange, ...] = ()
    icmp_type = icmp_code = None
    if protocol in (Protocol.TCP, Protocol.UDP):
        ports = tuple(draw(st.lists(port_range(), min_size=1, max_size=3)))
    elif protocol in (Protocol.ICMP, Protocol.ICMPV6):
        icmp_type, icmp_code = draw(icmp_values), draw(st.sampled_from([0, 1, 255]))
    return Rule(protocol, dests, ports, icmp_type, icmp_code, log=draw(st.sampled_from([False] * 5 + [True])))


@st.composite
def group(draw: st.DrawFn, index: int, pool: list[Rule]) -> SecurityGroup:
    # Rules from a shared pool, so that groups overlap (and sometimes hold the same rules).
    rules = tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5)))
    spaces = st.lists(st.sampled_from(SPACES), max_size=2, unique=True).map(tuple)
    return SecurityGroup(f"sg-{index}", f"g{index}", rules, running_default=draw(st.booleans()),
                         staging_default=draw(st.booleans()), running_spaces=draw(spaces),
                         staging_spaces=draw(spaces))


@st.composite
def chain_settings(draw: st.DrawFn) -> ChainSettings:
    nets = st.lists(st.sampled_from([*DENY[4], *DENY[6]]).map(ipaddress.ip_network), max_size=2).map(tuple)
    deny = DenyNetworks(always=draw(nets), running=draw(nets), staging=draw(nets))
    limit = draw(st.none() | st.builds(ConnLimit, st.just(5), st.just(10), st.booleans()))
    return ChainSettings(deny_networks=deny, asg_logging=draw(st.sampled_from([False] * 5 + [True])),
                         conn_limit=limit)


@st.composite
def packet(draw: st.DrawFn, rules: list[Rule]) -> Packet:
    """A packet aimed at a rule (its destinations, ports or ICMP type, or just past them), or anywhere."""
    state = draw(st.sampled_from([State.NEW, State.NEW, State.NEW, State.ESTABLISHED, State.RELATED, State.INVALID]))
    aimed = bool(rules) and draw(st.integers(0, 3)) > 0
    target = draw(st.sampled_from(rules)) if aimed else None
    if target is None:
        version = draw(st.sampled_from([4, 6]))
        offset = draw(st.integers(0, SPAN + 8) | st.integers(0, 2**24))
        protocols = [Proto.TCP, Proto.UDP, Proto.ICMP if version == 4 else Proto.ICMPV6]
        return _packet(draw, address(version, offset), draw(st.sampled_from(protocols)), state, None)
    dst_range = draw(st.sampled_from(target.destinations))
    version, base = dst_range.version, BASE[dst_range.version]
    lo, hi = int(dst_range.start) - base, int(dst_range.end) - base
    dst = address(version, draw(st.sampled_from([lo, hi, hi + 1]) | st.integers(lo, hi)))
    if target.protocol is Protocol.ALL:
        protocol = draw(st.sampled_from([Proto.TCP, Proto.UDP, Proto.ICMP if dst.version == 4 else Proto.ICMPV6]))
    else:
        protocol = Proto(target.protocol.value)
    return _packet(draw, dst, protocol, state, target)


def _packet(draw: st.DrawFn, dst: IPAddress, protocol: Proto, state: State, target: Rule | None) -> Packet:
    if protocol in (Proto.TCP, Proto.UDP):
        edges = [p for r in (target.ports if target else ()) for p in (r.start, r.end, r.end + 1) if p <= 65535]
        port = draw(st.sampled_from(edges) if edges else st.sampled_from([1, 5, 80, 65535]) | st.integers(0, 65535))
        return Packet(dst=dst, protocol=protocol, port=port, state=state)
    if target is not None and target.icmp_type is not None and target.icmp_type != 255:
        icmp_type = draw(st.sampled_from([target.icmp_type, (target.icmp_type + 1) % 256]))
        icmp_code = draw(st.sampled_from([target.icmp_code if target.icmp_code != 255 else 7, 0, 1]))
    else:
        icmp_type, icmp_code = draw(icmp_values), draw(st.sampled_from([0, 1, 255]))
    return Packet(dst=dst, protocol=protocol, icmp_type=icmp_type, icmp_code=icmp_code, state=state)


@dataclasses.dataclass(frozen=True)
class Cell:
    """Groups, containers, settings and packets (container index, packet); ``before``: groups and
    settings (with their layout) applied first, so that the tables are reached by a change."""

    groups: list[SecurityGroup]
    containers: list[Container]
    settings: ChainSettings
    packets: list[tuple[int, Packet]]
    before: tuple[list[SecurityGroup], ChainSettings] | None


@st.composite
def cells(draw: st.DrawFn) -> Cell:
    pool = draw(st.lists(rule(), min_size=1, max_size=8))
    groups = [draw(group(i, pool)) for i in range(draw(st.integers(1, 5)))]
    workloads = st.sampled_from([Workload.APP, Workload.APP, Workload.TASK, Workload.STAGING, Workload.OTHER])
    containers = [Container(f"c{i}", f"10.255.0.{i + 2}", "app-guid", draw(st.sampled_from(SPACES)),
                            draw(workloads)) for i in range(draw(st.integers(1, 3)))]
    rules = [r for g in groups for r in g.rules]
    packets = [(draw(st.integers(0, len(containers) - 1)), draw(packet(rules))) for _ in range(12)]
    before = None
    if draw(st.booleans()):
        earlier = [draw(group(i, pool + draw(st.lists(rule(), max_size=2)))) for i in range(draw(st.integers(1, 4)))]
        layout = draw(st.sampled_from(list(ChainLayout)))
        before = earlier, dataclasses.replace(draw(chain_settings()), layout=layout)
    return Cell(groups, containers, draw(chain_settings()), packets, before)


def plans(groups: list[SecurityGroup], containers: list[Container], settings_: ChainSettings
          ) -> dict[str, ContainerChains]:
    index = GroupIndex(groups)
    out = {}
    for c in containers:
        plan = plan_container(c, index, settings_)
        assert plan is not None
        out[c.handle] = plan
    return out


def tables(cell: Cell, layout: ChainLayout) -> tuple[dict[int, FakeTable], dict[str, ContainerChains]]:
    """Both families' tables, with the CNI's parent chains, after the apply of ``cell.before`` (if any)
    and of every container's plan in ``layout``, by one Dataplane; and those plans."""
    runners = {4: FakeRunner(4), 6: FakeRunner(6)}
    for version, runner in runners.items():
        for c in cell.containers:
            reject = "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"
            runner.table.create_chain(chains.netout_chain_name(c.handle), [f"-j REJECT --reject-with {reject}"])
    dp = Dataplane(runners=runners, logger=Logger("test", stream=io.StringIO()))
    if cell.before is not None:
        assert dp.apply(plans(cell.before[0], cell.containers, cell.before[1])).ok
    desired = plans(cell.groups, cell.containers, dataclasses.replace(cell.settings, layout=layout))
    report = dp.apply(desired)
    assert report.ok, report.failed
    return {v: r.table for v, r in runners.items()}, desired


def family(plan: ContainerChains, version: int) -> FamilyChains | None:
    return plan.v4 if version == 4 else plan.v6


def accept_sequences(alone: FamilyChains, shared: FamilyChains) -> tuple[list[chains.Argv], list[chains.Argv]]:
    """The accept rules each layout evaluates, in order (the shared layout's own, then its chains')."""
    start = alone.shared_at - alone.accept_count
    own = list(shared.asg.rules[start:shared.shared_at])
    return list(alone.asg.rules[start:alone.shared_at]), own + [r for c in shared.shared for r in c.rules]


def check_traversal(walks: dict[str, Walk], plans: dict[str, dict[str, ContainerChains]], handle: str,
                    version: int) -> None:
    """Shared costs one rule per shared chain entered when both layouts hold the same accept rules in the
    same order; a packet no accept rule takes costs, in addition, every rule two groups' chains repeat."""
    shared, alone = walks["shared"], walks["per-container"]
    entered = sum(chains.is_shared_chain(c) for c in shared.path)
    fam_alone, fam_shared = family(plans["per-container"][handle], version), family(plans["shared"][handle], version)
    if fam_alone is None or fam_shared is None:
        assert fam_alone is fam_shared is None and shared == alone
        return
    sequence_alone, sequence_shared = accept_sequences(fam_alone, fam_shared)
    if fam_shared.shared_at == fam_alone.shared_at - fam_alone.accept_count:  # nothing logged
        # the same rules in the same order, but for the repeats per-container drops (the first kept)
        assert list(reversed(list(dict.fromkeys(reversed(sequence_shared))))) == sequence_alone
    if sequence_alone == sequence_shared:
        assert shared.traversed == alone.traversed + entered
    elif alone.path[1:] == (fam_alone.asg.name,) and alone.traversed == 1 + len(fam_alone.asg.rules):
        # no accept rule took it: the parent's jump and every rule of the ASG chain were evaluated
        repeated = len(sequence_shared) - len(sequence_alone)
        assert entered == len(fam_shared.shared) and repeated >= 0
        assert shared.traversed == alone.traversed + entered + repeated


@settings(max_examples=150, deadline=None, derandomize=True)
@given(cells())
def test_both_layouts_give_every_packet_the_models_verdict(cell: Cell) -> None:
    built = {layout: tables(cell, ChainLayout(layout)) for layout in LAYOUTS}
    for i, pkt in cell.packets:
        c = cell.containers[i]
        want = reference_verdict(cell.groups, c, cell.settings, pkt)
        walks = {layout: walk(built[layout][0][pkt.dst.version], chains.netout_chain_name(c.handle), pkt)
                 for layout in LAYOUTS}
        for layout, w in walks.items():
            assert w.verdict is want, (layout, c, pkt, w)
        check_traversal(walks, {layout: built[layout][1] for layout in LAYOUTS}, c.handle, pkt.dst.version)


def test_the_shared_layout_costs_one_rule_per_group_chain_when_groups_are_disjoint() -> None:
    """The bench's cell shape: global groups first, then space groups, no rule in two groups."""
    tcp = [Rule(Protocol.TCP, (IPRange(address(4, i), address(4, i)),), (PortRange(80 + i, 80 + i),))
           for i in range(6)]
    groups = [SecurityGroup("sg-g", "g", tuple(tcp[:3]), running_default=True),
              SecurityGroup("sg-s", "s", tuple(tcp[3:]), running_spaces=("s1",))]
    c = Container("c0", "10.255.0.2", "app-guid", "s1", Workload.APP)
    cell = Cell(groups, [c], ChainSettings(), [], None)
    built = {layout: tables(cell, ChainLayout(layout))[0][4] for layout in LAYOUTS}
    for i in range(7):
        pkt = Packet(dst=address(4, i), protocol=Proto.TCP, port=80 + i)
        walks = {layout: walk(built[layout], "netout--c0", pkt) for layout in LAYOUTS}
        entered = sum(chains.is_shared_chain(name) for name in walks["shared"].path)
        assert walks["shared"].verdict is walks["per-container"].verdict is (
            Verdict.ACCEPT if i < 6 else Verdict.REJECT)
        assert walks["shared"].traversed == walks["per-container"].traversed + entered
        assert entered == (1 if 3 <= i < 6 else 2)


def test_a_rule_two_groups_repeat_is_evaluated_twice_in_the_shared_layout() -> None:
    """Per-container drops exact duplicates across groups; shared chains hold each group's rules. So
    a packet no rule takes costs, beyond one rule per chain entered, every repeated rule."""
    a, b = (Rule(Protocol.TCP, (IPRange(address(4, 1), address(4, 1)),), (PortRange(p, p),)) for p in (80, 443))
    groups = [SecurityGroup("sg-1", "one", (a,), running_default=True),
              SecurityGroup("sg-2", "two", (a, b), running_default=True)]
    cell = Cell(groups, [Container("c0", "10.255.0.2", "app-guid", "s1", Workload.APP)], ChainSettings(), [], None)
    built = {layout: tables(cell, ChainLayout(layout))[0][4] for layout in LAYOUTS}
    miss = Packet(dst=address(4, 9), protocol=Proto.TCP, port=22)
    walks = {layout: walk(built[layout], "netout--c0", miss) for layout in LAYOUTS}
    assert walks["per-container"].traversed == 6  # parent jump, 2 state rules, b, a, REJECT
    assert walks["shared"].traversed == 6 + 2 + 1  # and 2 jumps, and a again


def test_both_layouts_evaluate_the_default_groups_rules_before_the_spaces() -> None:
    """A space's group listed before a globally enabled one: per-container evaluates the default groups'
    rules after the space's (silk's order), and the shared layout's jumps follow the same order."""
    rules = [Rule(Protocol.TCP, (IPRange(address(4, i), address(4, i)),), (PortRange(80, 80),)) for i in range(2)]
    groups = [SecurityGroup("sg-s", "s", (rules[0],), running_spaces=("s1",)),
              SecurityGroup("sg-g", "g", (rules[1],), running_default=True)]
    cell = Cell(groups, [Container("c0", "10.255.0.2", "app-guid", "s1", Workload.APP)], ChainSettings(), [], None)
    built = {layout: tables(cell, ChainLayout(layout))[0][4] for layout in LAYOUTS}
    for i in range(2):
        walks = {layout: walk(built[layout], "netout--c0", Packet(dst=address(4, i), protocol=Proto.TCP, port=80))
                 for layout in LAYOUTS}
        entered = sum(chains.is_shared_chain(name) for name in walks["shared"].path)
        assert walks["shared"].verdict is walks["per-container"].verdict is Verdict.ACCEPT
        assert (walks["per-container"].traversed, entered) == ((4, 1) if i == 0 else (5, 2))
        assert walks["shared"].traversed == walks["per-container"].traversed + entered
