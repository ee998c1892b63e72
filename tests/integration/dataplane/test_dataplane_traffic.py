"""Real traffic through a cell whose filter table the dataplane wrote (legacy and nft, IPv4 and IPv6).

Each container gets one kind of rule; probes from its namespace to listeners in
destination namespaces must connect exactly where its rules allow, and be
refused everywhere else. Every case runs in both chain layouts (issue 16); a second
container of the ``ports`` space shares that space's chain in the shared layout.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import ChainLayout, ChainSettings, DenyNetworks
from support import plans as planning
from support.cell import Cell, cell
from support.env import IPTABLES_BACKENDS, require_backend
from support.plans import container, dataplane, groups_for, plan

D = "198.18.1."
SPACES: dict[str, list[dict[str, Any]]] = {
    "ports": [{"protocol": "tcp", "destination": D + "1", "ports": "80,443"},
              {"protocol": "tcp", "destination": D + "2", "ports": "1000-2000"},
              {"protocol": "udp", "destination": D + "1", "ports": "53, 1500"}],
    "dests": [{"protocol": "tcp", "destination": D + "0/30", "ports": "80"},
              {"protocol": "tcp", "destination": D + "5-" + D + "6", "ports": "80"},
              {"protocol": "tcp", "destination": f"{D}8,{D}10", "ports": "80"}],
    "icmp": [{"protocol": "icmp", "destination": D + "1", "type": 8, "code": 0},
             {"protocol": "icmp", "destination": D + "2", "type": 8, "code": -1},
             {"protocol": "icmp", "destination": D + "3", "type": 0, "code": 0},
             {"protocol": "icmp", "destination": D + "4", "type": 8, "code": 1},
             {"protocol": "icmp", "destination": D + "5", "type": -1, "code": -1}],
    "all": [{"protocol": "all", "destination": D + "1"}],
    "deny": [{"protocol": "all", "destination": "198.18.0.0/16"}],
    "logged": [{"protocol": "tcp", "destination": D + "1", "ports": "80", "log": True}],
    "ipv6": [{"protocol": "tcp", "destination": "fd00:198::11", "ports": "80"},
             {"protocol": "udp", "destination": "fd00:198::11", "ports": "53"},
             {"protocol": "icmpv6", "destination": "fd00:198::12", "type": 128, "code": -1}],
}
TWIN = "ports-twin"  # in the "ports" space too
HANDLES = [*SPACES, TWIN, "other"]
DENY = ChainSettings(deny_networks=DenyNetworks(running=(ipaddress.ip_network("198.18.1.0/29"),)))
LOGGING = ChainSettings(asg_logging=True)


@pytest.fixture(scope="module", params=[(b, layout) for b in IPTABLES_BACKENDS for layout in ChainLayout],
                ids=lambda p: f"{p[0]}-{p[1]}")
def traffic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    backend, layout = request.param
    require_backend(backend)
    with planning.layout(layout), cell(backend, Path(tmp_path_factory.mktemp("cell"))) as c:
        c.add_destination("d1", [f"{D}{i}" for i in range(1, 13)] + ["fd00:198::11", "fd00:198::12"],
                          tcp=[80, 443, 999, 1000, 1500, 2000, 2001, 8080], udp=[53, 1500, 5353])
        groups = groups_for(SPACES)
        plans = {}
        for i, handle in enumerate(HANDLES, 1):
            c.add_container(handle)
            c.hook(handle)
            settings = DENY if handle == "deny" else LOGGING if handle == "logged" else ChainSettings()
            workload = "other" if handle == "other" else "app"
            space = "ports" if handle == TWIN else handle
            plans[handle] = plan(container(handle, space, index=i, workload=workload), groups, settings)
        dp, _ = dataplane(c.runners())
        report = dp.apply(plans)
        assert report.ok and sorted(report.changed) == sorted(HANDLES)
        shared = plans["ports"].v4.shared
        assert shared == plans[TWIN].v4.shared and bool(shared) is (layout is ChainLayout.SHARED)
        yield c


ALLOWED = [
    ("ports", "tcp", D + "1", 80), ("ports", "tcp", D + "1", 443), ("ports", "tcp", D + "2", 1000),
    ("ports", "tcp", D + "2", 1500), ("ports", "tcp", D + "2", 2000), ("ports", "udp", D + "1", 53),
    ("ports", "udp", D + "1", 1500), (TWIN, "tcp", D + "1", 443), (TWIN, "udp", D + "1", 53),
    *[("dests", "tcp", D + str(i), 80) for i in (1, 2, 3, 5, 6, 8, 10)],
    ("icmp", "icmp", D + "1", 0), ("icmp", "icmp", D + "2", 0), ("icmp", "icmp", D + "5", 0),
    ("all", "tcp", D + "1", 80), ("all", "tcp", D + "1", 8080), ("all", "udp", D + "1", 5353),
    ("all", "icmp", D + "1", 0),
    ("deny", "tcp", D + "9", 80), ("deny", "udp", D + "12", 53),
    ("logged", "tcp", D + "1", 80),
    ("ipv6", "tcp", "fd00:198::11", 80), ("ipv6", "udp", "fd00:198::11", 53), ("ipv6", "icmp", "fd00:198::12", 0),
]
REFUSED = [
    ("ports", "tcp", D + "1", 8080), ("ports", "tcp", D + "2", 999), ("ports", "tcp", D + "2", 2001),
    ("ports", "tcp", D + "2", 80), ("ports", "udp", D + "1", 5353), ("ports", "udp", D + "2", 53),
    ("ports", "tcp", D + "3", 80), ("ports", "icmp", D + "1", 0), ("ports", "tcp", "fd00:198::11", 80),
    (TWIN, "tcp", D + "1", 8080), (TWIN, "tcp", D + "3", 80),
    *[("dests", "tcp", D + str(i), 80) for i in (4, 7, 9, 11)], ("dests", "tcp", D + "1", 443),
    ("icmp", "icmp", D + "3", 0), ("icmp", "icmp", D + "4", 0), ("icmp", "icmp", D + "6", 0),
    ("icmp", "tcp", D + "1", 80),
    ("all", "tcp", D + "2", 80), ("all", "icmp", D + "2", 0),
    ("deny", "tcp", D + "1", 80), ("deny", "udp", D + "7", 53), ("deny", "icmp", D + "2", 0),
    ("deny", "tcp", "fd00:198::11", 80),
    ("logged", "tcp", D + "1", 443), ("logged", "tcp", D + "2", 80),
    ("ipv6", "tcp", "fd00:198::11", 443), ("ipv6", "tcp", "fd00:198::12", 80), ("ipv6", "icmp", "fd00:198::11", 0),
    ("ipv6", "tcp", D + "1", 80),
    ("other", "tcp", D + "1", 80), ("other", "udp", D + "1", 53), ("other", "icmp", D + "1", 0),
    ("other", "tcp", "fd00:198::11", 80),
]


def _ids(case: tuple[str, str, str, int]) -> str:
    return "-".join(map(str, case))


@pytest.mark.parametrize("case", ALLOWED, ids=_ids)
def test_allowed_destinations_connect(traffic: Cell, case: tuple[str, str, str, int]) -> None:
    handle, op, addr, port = case
    assert traffic.probe(handle, op, addr, port) == "ok"


@pytest.mark.parametrize("case", REFUSED, ids=_ids)
def test_everything_else_is_refused(traffic: Cell, case: tuple[str, str, str, int]) -> None:
    handle, op, addr, port = case
    assert traffic.probe(handle, op, addr, port) == "refused"


def test_established_traffic_flows_both_ways(traffic: Cell) -> None:
    """Open while allowed, tighten, send: the open connection still flows both ways, new ones are refused.

    Once the allow is gone only the RELATED,ESTABLISHED accept lets the container's packets of
    the open connection through its chain (the echoes come back without crossing it).
    """
    handle = "established"  # a container of its own: tightening its rules leaves the other cases alone
    index = traffic.add_container(handle).index
    traffic.hook(handle)
    dp, _ = dataplane(traffic.runners())
    allowed = plan(container(handle, "ports", index=index), groups_for(SPACES))
    assert dp.apply({handle: allowed}, complete=False).ok
    assert traffic.probe(handle, "open", D + "1", 80, conn="kept") == "ok"
    assert traffic.probe(handle, "send", D + "1", conn="kept") == "ok"

    tightened = plan(container(handle, "no-groups", index=index), groups_for(SPACES))
    report = dp.apply({handle: tightened}, complete=False)
    assert report.ok and handle in report.changed
    assert traffic.probe(handle, "tcp", D + "1", 80) == "refused"
    for _ in range(3):
        assert traffic.probe(handle, "send", D + "1", conn="kept") == "ok"


def test_log_rules_are_reached(traffic: Cell) -> None:
    log_chain = chains.log_chain_name("logged")
    asg = chains.asg_chain_name("logged")

    def deny_logged() -> int:  # the DENY log rule's counter, found by what it does, not where it sits
        rules = dict(zip(traffic.rules(4, asg), traffic.packets(4, asg), strict=True))
        return next(count for rule, count in rules.items() if "-j LOG" in rule and "DENY_" in rule)

    before_ok, before_deny = sum(traffic.packets(4, log_chain)), deny_logged()
    assert traffic.probe("logged", "tcp", D + "1", 80) == "ok"
    assert traffic.probe("logged", "tcp", D + "1", 443) == "refused"
    assert sum(traffic.packets(4, log_chain)) > before_ok  # accepted flow went through the log chain
    assert deny_logged() > before_deny  # the DENY log rule saw the refused one
