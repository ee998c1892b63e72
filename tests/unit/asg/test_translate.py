"""A container's chains: names, scaffold order, deny networks, logging, limits, IPv6."""

from __future__ import annotations

import ipaddress

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.model import Container, Workload
from dynamic_asgs.asg.parse import parse_cc_group
from dynamic_asgs.asg.translate import (
    ChainSettings,
    ConnLimit,
    DenyNetworks,
    GroupIndex,
    accept_rules,
    plan_container,
)

HANDLE = "32a7bfc2-699f-495b-51b6-3e18"
RELATED = ("-m", "state", "--state", "RELATED,ESTABLISHED", "--jump", "ACCEPT")
INVALID = ("-p", "tcp", "-m", "state", "--state", "INVALID", "--jump", "DROP")
REJECT = ("--jump", "REJECT", "--reject-with", "icmp-port-unreachable")


def container(workload: str = "app", space: str = "s1", handle: str = HANDLE, app: str = "app-1") -> Container:
    return Container(handle, "10.255.0.2", app, space, Workload.of(workload), workload, app)


def group(guid: str, rules: list[dict[str, object]], *, running: list[str] = (), staging: list[str] = (),  # type: ignore[assignment]
          running_default: bool = False, staging_default: bool = False):  # type: ignore[no-untyped-def]
    return parse_cc_group({
        "guid": guid, "name": guid, "rules": rules,
        "globally_enabled": {"running": running_default, "staging": staging_default},
        "relationships": {"running_spaces": {"data": [{"guid": s} for s in running]},
                          "staging_spaces": {"data": [{"guid": s} for s in staging]}},
    })


def tcp(dst: str, ports: str, **kw: object) -> dict[str, object]:
    return {"protocol": "tcp", "destination": dst, "ports": ports, **kw}


def test_chain_names_follow_silk() -> None:
    assert chains.asg_chain_name("32a7bfc2-699f-495b-51b6-3e18") == "asg-32a7bfc2699f495b51b6"
    assert chains.asg_chain_name("check-32a7bfc2-699f-495b-51b6-3e18") == "asg-32a7bfc2699f495b51b6"
    assert chains.netout_chain_name("some-container-id-that-is-long") == "netout--some-container-id-th"
    assert chains.log_chain_name("7a79c4db-0126-4bee-4") == "netout--7a79c4db-0126-4--log"
    assert chains.rate_limit_log_chain_name(HANDLE) == "netout--32a7bfc2-699--rl-log"
    for name in (chains.log_chain_name(HANDLE * 3), chains.rate_limit_log_chain_name(HANDLE * 3)):
        assert len(name) <= 28
    assert chains.candidate_chain_name("check-32a7bfc2-699f-495b-51b6-3e18") == "casg-32a7bfc2699f495b51b6"


def test_chain_kinds() -> None:
    names = {"netout": chains.netout_chain_name(HANDLE), "asg": chains.asg_chain_name(HANDLE),
             "casg": chains.candidate_chain_name(HANDLE), "log": chains.log_chain_name(HANDLE),
             "rl-log": chains.rate_limit_log_chain_name(HANDLE), "other": "FORWARD"}
    kinds = {"owned": chains.is_owned_chain, "tracked": chains.is_tracked_chain,
             "helper": chains.is_helper_chain, "parent": chains.is_parent_chain}
    found = {kind: sorted(k for k, name in names.items() if test(name)) for kind, test in kinds.items()}
    assert found == {"owned": ["asg", "casg"], "tracked": ["asg", "casg", "log", "netout", "rl-log"],
                     "helper": ["log", "rl-log"], "parent": ["netout"]}


def test_scaffold_order_and_parent_content() -> None:
    g = group("g", [tcp("10.0.0.1", "80")], running=["s1"])
    plan = plan_container(container(), [g], ChainSettings())
    assert plan is not None and plan.v6 is None
    asg = plan.v4.asg
    assert asg.name == "asg-32a7bfc2699f495b51b6"
    assert asg.rules == (
        RELATED,
        INVALID,
        ("-m", "iprange", "-p", "tcp", "--dst-range", "10.0.0.1-10.0.0.1", "-m", "tcp",
         "--destination-port", "80:80", "--jump", "ACCEPT"),
        REJECT,
    )
    assert plan.v4.parent.name == "netout--32a7bfc2-699f-495b-5"
    assert plan.v4.parent.rules == (("-j", asg.name), REJECT)
    assert plan.v4.helpers == () and plan.rule_count == 1


def test_rules_are_reversed_like_the_go_agent_and_duplicates_dropped() -> None:
    g1 = group("g1", [tcp("1.1.1.1", "1"), tcp("2.2.2.2", "2")], running_default=True)
    g2 = group("g2", [tcp("3.3.3.3", "3"), tcp("1.1.1.1", "1")], running=["s1"])
    plan = plan_container(container(), [g1, g2], ChainSettings())
    assert plan is not None
    dsts = [a[5] for a in plan.v4.asg.rules[2:-1]]
    assert dsts == ["3.3.3.3-3.3.3.3", "2.2.2.2-2.2.2.2", "1.1.1.1-1.1.1.1"]


@pytest.mark.parametrize(
    ("workload", "expected"),
    [
        ("app", {"running-default", "running-bound"}),
        ("task", {"running-default", "running-bound"}),
        ("staging", {"staging-default", "staging-bound"}),
        ("sidecar", set()),
    ],
)
def test_workload_picks_running_or_staging_groups(workload: str, expected: set[str]) -> None:
    def g(name: str, n: int, **kw: object):  # type: ignore[no-untyped-def]
        return group(name, [tcp(f"10.0.0.{n}", "80")], **kw)  # type: ignore[arg-type]

    groups = [
        g("running-default", 1, running_default=True),
        g("running-bound", 2, running=["s1"]),
        g("running-other-space", 3, running=["s2"]),
        g("staging-default", 4, staging_default=True),
        g("staging-bound", 5, staging=["s1"]),
    ]
    plan = plan_container(container(workload), groups, ChainSettings())
    assert plan is not None
    got = {a[5].split("-")[0] for a in plan.v4.asg.rules if "--dst-range" in a}
    by_ip = {f"10.0.0.{i}": n for i, n in enumerate(
        ["", "running-default", "running-bound", "running-other-space", "staging-default", "staging-bound"])}
    assert {by_ip[ip] for ip in got} == expected
    assert plan.v4.asg.rules[-1] == REJECT


def test_no_asg_chain_without_policy_group_or_space() -> None:
    assert plan_container(container(app=""), [], ChainSettings()) is None
    assert plan_container(container(space=""), [], ChainSettings()) is None


def test_deny_networks_come_before_accepts_and_follow_the_workload() -> None:
    net = ipaddress.ip_network
    settings = ChainSettings(deny_networks=DenyNetworks(
        always=(net("169.254.0.0/16"),), running=(net("10.0.0.0/8"),), staging=(net("172.16.0.0/12"),)))
    g = group("g", [tcp("10.1.1.1", "80")], running_default=True, staging_default=True)
    running = plan_container(container("app"), [g], settings)
    staging = plan_container(container("staging"), [g], settings)
    assert running is not None and staging is not None
    denies = [a[1] for a in running.v4.asg.rules if a[0] == "-d"]
    assert denies == ["10.0.0.0/8", "169.254.0.0/16"]
    assert [a[1] for a in staging.v4.asg.rules if a[0] == "-d"] == ["172.16.0.0/12", "169.254.0.0/16"]
    first_accept = next(i for i, a in enumerate(running.v4.asg.rules) if "--dst-range" in a)
    last_deny = max(i for i, a in enumerate(running.v4.asg.rules) if a[0] == "-d")
    assert last_deny < first_accept


def test_rule_log_jumps_to_the_log_chain_which_is_emitted() -> None:
    g = group("g", [tcp("10.0.0.1", "80", log=True), tcp("10.0.0.2", "81")], running_default=True)
    plan = plan_container(container(), [g], ChainSettings())
    assert plan is not None
    log_chain = chains.log_chain_name(HANDLE)
    targets = [a[-2:] for a in plan.v4.asg.rules if "--dst-range" in a]
    assert targets == [("--jump", "ACCEPT"), ("-g", log_chain)]
    assert [c.name for c in plan.v4.helpers] == [log_chain]
    assert plan.v4.helpers[0].rules[-1] == ("--jump", "ACCEPT")


def test_global_asg_logging_logs_every_accept_and_denials() -> None:
    g = group("g", [tcp("10.0.0.1", "80")], running_default=True)
    plan = plan_container(container(), [g], ChainSettings(asg_logging=True, denied_logs_per_sec=3))
    assert plan is not None
    rules = plan.v4.asg.rules
    assert rules[2][-2:] == ("-g", chains.log_chain_name(HANDLE))
    assert rules[-2] == ("-m", "limit", "--limit", "3/s", "--limit-burst", "3", "--jump", "LOG",
                         "--log-prefix", "DENY_32a7bfc2-699f-495b-51b6 ")
    assert rules[-1] == REJECT


@pytest.mark.parametrize("logging", [False, True])
def test_outbound_connection_limit(logging: bool) -> None:
    plan = plan_container(container(), [], ChainSettings(conn_limit=ConnLimit(100, 1000, logging)))
    assert plan is not None
    limit = plan.v4.asg.rules[2]
    target = chains.rate_limit_log_chain_name(HANDLE) if logging else "REJECT"
    assert limit == ("-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-m", "hashlimit",
                     "--hashlimit-above", "100/sec", "--hashlimit-burst", "1000", "--hashlimit-mode",
                     "dstip,dstport", "--hashlimit-name", HANDLE, "--hashlimit-htable-expire", "10000",
                     "-j", target)
    assert [c.name for c in plan.v4.helpers] == ([target] if logging else [])


def test_ipv6_destinations_and_icmpv6_go_to_the_ip6tables_side() -> None:
    g = group("g", [
        tcp("10.0.0.1,2001:db8::1", "443"),
        {"protocol": "icmpv6", "destination": "2001:db8::/64", "type": 128, "code": -1},
        {"protocol": "icmpv6", "destination": "::1", "type": -1, "code": -1},
        {"protocol": "all", "destination": "fd00::1-fd00::9"},
    ], running_default=True)
    plan = plan_container(container(), [g], ChainSettings())
    assert plan is not None and plan.v6 is not None
    v4 = [a for a in plan.v4.asg.rules if "--dst-range" in a]
    v6 = [a for a in plan.v6.asg.rules if "--dst-range" in a]
    assert [a[5] for a in v4] == ["10.0.0.1-10.0.0.1"]
    assert v6 == [
        ("-m", "iprange", "--dst-range", "fd00::1-fd00::9", "--jump", "ACCEPT"),
        ("-m", "iprange", "-p", "ipv6-icmp", "--dst-range", "::1-::1", "--jump", "ACCEPT"),
        ("-m", "iprange", "-p", "ipv6-icmp", "--dst-range", "2001:db8::-2001:db8::ffff:ffff:ffff:ffff",
         "-m", "icmp6", "--icmpv6-type", "128", "--jump", "ACCEPT"),
        ("-m", "iprange", "-p", "tcp", "--dst-range", "2001:db8::1-2001:db8::1", "-m", "tcp",
         "--destination-port", "443:443", "--jump", "ACCEPT"),
    ]
    assert plan.v6.asg.rules[-1] == ("--jump", "REJECT", "--reject-with", "icmp6-port-unreachable")
    assert plan.rule_count == 5


@pytest.mark.parametrize(
    ("icmp_type", "code", "expected"),
    [(8, 0, "8/0"), (0, 3, "0/3"), (-1, 3, "255/3"), (-1, -1, "255/255"), (8, -1, "8")],
)
def test_icmp_type_code_rendering(icmp_type: int, code: int, expected: str) -> None:
    g = group("g", [{"protocol": "icmp", "destination": "10.0.0.1", "type": icmp_type, "code": code}])
    (argv,) = accept_rules(g.rules, 4, None)
    assert argv[argv.index("--icmp-type") + 1] == expected


def test_group_index_memoises_accepts_per_space() -> None:
    g = group("g", [tcp("10.0.0.1", "80")], running=["s1"])
    index = GroupIndex([g])
    a = plan_container(container(handle="a"), index, ChainSettings())
    b = plan_container(container(handle="b"), index, ChainSettings())
    assert a is not None and b is not None
    assert a.v4.asg.rules[2] is b.v4.asg.rules[2]
    assert a.v4.asg.name != b.v4.asg.name
