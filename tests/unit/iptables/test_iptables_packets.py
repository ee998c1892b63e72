"""The packet walker: the matches and targets our renderer writes, kernel jump semantics, strictness."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from dynamic_asgs.iptables.fake import FakeTable
from dynamic_asgs.iptables.packets import MAX_ENTRIES, Packet, Proto, State, Verdict, Walk, WalkError, walk

V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def table(chains: dict[str, list[str]]) -> FakeTable:
    """A fake table holding ``chains`` (rules without ``-A <chain>``), loaded as a restore would."""
    out = FakeTable()
    out.load([*(f":{name} - [0:0]" for name in chains),
              *(f"-A {name} {rule}" for name, rules in chains.items() for rule in rules)])
    return out


def tcp(dst: str = "10.0.0.1", port: int = 80, state: State = State.NEW) -> Packet:
    return Packet(dst=ipaddress.ip_address(dst), protocol=Proto.TCP, port=port, state=state)


def udp(dst: str = "10.0.0.1", port: int = 53) -> Packet:
    return Packet(dst=ipaddress.ip_address(dst), protocol=Proto.UDP, port=port)


def icmp(icmp_type: int, icmp_code: int, dst: str = "10.0.0.1") -> Packet:
    proto = Proto.ICMP if ipaddress.ip_address(dst).version == 4 else Proto.ICMPV6
    return Packet(dst=ipaddress.ip_address(dst), protocol=proto, icmp_type=icmp_type, icmp_code=icmp_code)


RANGE = "-m iprange --dst-range 10.0.0.2-10.0.0.4"
TCP_PORTS = "-m iprange -p tcp --dst-range 10.0.0.0-10.0.0.255 -m tcp --destination-port 80:90"
ICMP = "-m iprange -p icmp --dst-range 10.0.0.0-10.0.0.255 -m icmp --icmp-type"
ICMP6 = "-m iprange -p ipv6-icmp --dst-range fd00::-fd00::ff -m icmp6 --icmpv6-type"
MATCHES = [
    ("-m comment --comment dasg:0123456789abcdef", tcp(), True),
    (RANGE, tcp("10.0.0.1"), False),
    (RANGE, tcp("10.0.0.2"), True),
    (RANGE, tcp("10.0.0.4"), True),
    (RANGE, tcp("10.0.0.5"), False),
    ("-m iprange ! --dst-range 10.0.0.2-10.0.0.4", tcp("10.0.0.5"), True),
    ("-m iprange --dst-range fd00::1-fd00::5", tcp("fd00::5"), True),
    ("-d 10.1.0.0/16", tcp("10.1.255.255"), True),
    ("-d 10.1.0.0/16", tcp("10.2.0.0"), False),
    ("-d fd99::/64", tcp("fd99::1"), True),
    ("-p tcp", tcp(), True),
    ("-p tcp", udp(), False),
    ("-p udp", udp(), True),
    ("-p all", icmp(8, 0), True),
    ("! -p udp", tcp(), True),
    ("! -p udp", udp(), False),
    ("-p icmp", icmp(8, 0), True),
    ("-p icmp", icmp(128, 0, "fd00::1"), False),
    ("-p ipv6-icmp", icmp(128, 0, "fd00::1"), True),
    (TCP_PORTS, tcp(port=79), False),
    (TCP_PORTS, tcp(port=80), True),
    (TCP_PORTS, tcp(port=90), True),
    (TCP_PORTS, tcp(port=91), False),
    (TCP_PORTS, udp(port=85), False),
    ("-p udp -m udp --dport 53", udp(port=53), True),
    ("-p udp -m udp --dport 53", udp(port=54), False),
    ("-p udp -m udp ! --dport 53", udp(port=54), True),
    (f"{ICMP} 8", icmp(8, 0), True),
    (f"{ICMP} 8", icmp(8, 255), True),
    (f"{ICMP} 8", icmp(0, 0), False),
    (f"{ICMP} 3/1", icmp(3, 1), True),
    (f"{ICMP} 3/1", icmp(3, 2), False),
    (f"{ICMP} 255/255", icmp(3, 2), True),  # ip_tables: type 255 is any type
    (f"{ICMP} 255/3", icmp(8, 0), True),
    (f"{ICMP6} 128", icmp(128, 9, "fd00::1"), True),
    (f"{ICMP6} 128/0", icmp(128, 9, "fd00::1"), False),
    (f"{ICMP6} 255", icmp(128, 0, "fd00::1"), False),  # ip6_tables has no wildcard type
    ("-m iprange -p ipv6-icmp --dst-range fd00::-fd00::ff", icmp(1, 4, "fd00::1"), True),
    ("-m state --state RELATED,ESTABLISHED", tcp(state=State.ESTABLISHED), True),
    ("-m state --state RELATED,ESTABLISHED", tcp(state=State.RELATED), True),
    ("-m state --state RELATED,ESTABLISHED", tcp(state=State.NEW), False),
    ("-p tcp -m state --state INVALID", tcp(state=State.INVALID), True),
    ("-p tcp -m state --state INVALID", udp(), False),
    ("-m conntrack --ctstate INVALID,NEW,UNTRACKED", tcp(state=State.NEW), True),
    ("-m conntrack --ctstate INVALID,NEW,UNTRACKED", tcp(state=State.ESTABLISHED), False),
    ("-m conntrack ! --ctstate NEW", tcp(state=State.ESTABLISHED), True),
    ("-m limit --limit 1/s --limit-burst 1", tcp(), True),  # a lone packet never spends the burst
    ("-p tcp -m conntrack --ctstate NEW -m hashlimit --hashlimit-above 5/sec --hashlimit-burst 10 "
     "--hashlimit-mode dstip,dstport --hashlimit-name h1 --hashlimit-htable-expire 2000", tcp(), False),
]


@pytest.mark.parametrize(("match", "packet", "matches"), MATCHES)
def test_each_match_the_renderer_writes(match: str, packet: Packet, matches: bool) -> None:
    got = walk(table({"t": [f"{match} -j ACCEPT"]}), "t", packet)
    assert got.verdict is (Verdict.ACCEPT if matches else Verdict.FALLTHROUGH)
    assert got.traversed == 1 and got.path == ("t",)


def test_targets_jumps_gotos_returns_and_what_is_counted() -> None:
    t = table({
        "helper": ["-p udp -j RETURN", "-j LOG --log-prefix \"OK_h \"", "-p tcp -m tcp --dport 22 -j DROP"],
        "deep": ["-p tcp -m tcp --dport 23 -j ACCEPT"],
        "gone": ["-p tcp -m tcp --dport 24 -j ACCEPT", "-p tcp -m tcp --dport 25 -j RETURN"],
        "mid": ["-j helper", "-p tcp -m tcp --dport 24 -g gone", "-p tcp -m tcp --dport 25 -g gone",
                "-j deep", "-p tcp -m tcp --dport 26 -j RETURN", "-j REJECT --reject-with icmp-port-unreachable"],
        "entry": ["-m comment --comment dasg:0123456789abcdef -j mid", "-p tcp -m tcp --dport 25 -j ACCEPT"],
    })
    assert walk(t, "entry", tcp(port=22)) == Walk(Verdict.DROP, 5, ("entry", "mid", "helper"))
    assert walk(t, "entry", tcp(port=23)) == Walk(Verdict.ACCEPT, 9, ("entry", "mid", "helper", "deep"))
    # -g: the gone-to chain returns to the caller of the chain that went, not to the next rule
    assert walk(t, "entry", tcp(port=24)) == Walk(Verdict.ACCEPT, 7, ("entry", "mid", "helper", "gone"))
    assert walk(t, "entry", tcp(port=25)) == Walk(Verdict.ACCEPT, 10, ("entry", "mid", "helper", "gone"))
    assert walk(t, "entry", tcp(port=26)) == Walk(Verdict.FALLTHROUGH, 11, ("entry", "mid", "helper", "deep"))
    assert walk(t, "entry", udp()) == Walk(Verdict.REJECT, 9, ("entry", "mid", "helper", "deep"))
    assert walk(t, "entry", tcp(port=1)) == Walk(Verdict.REJECT, 11, ("entry", "mid", "helper", "deep"))


def test_rules_read_back_in_save_spelling_walk_alike() -> None:
    t = FakeTable()
    t.load([":asg-a - [0:0]", ":netout--a--log - [0:0]",
            "-A netout--a--log ! -p udp -m conntrack --ctstate INVALID,NEW,UNTRACKED -j LOG --log-prefix \"OK_a \"",
            "-A netout--a--log --jump ACCEPT",
            "-A asg-a -m iprange -p tcp --dst-range 10.0.0.1-10.0.0.1 -m tcp --destination-port 443:443 "
            "--goto netout--a--log",
            "-A asg-a --jump REJECT --reject-with icmp-port-unreachable"])
    assert t.rules("asg-a")[0].endswith("-g netout--a--log")  # the fake stores the short spelling
    assert walk(t, "asg-a", tcp(port=443)) == Walk(Verdict.ACCEPT, 3, ("asg-a", "netout--a--log"))
    assert walk(t, "asg-a", tcp(port=444)).verdict is Verdict.REJECT


REFUSED = [
    ("-p tcp -m multiport --dports 80,443 -j ACCEPT", "unknown match -m multiport"),
    ("-m tcp --dport 80 -j ACCEPT", "-m tcp needs -p tcp"),
    ("! -p udp -m udp --dport 53 -j ACCEPT", "-m udp needs -p udp"),
    ("! --dst-range 10.0.0.2-10.0.0.4 -m iprange -j ACCEPT", "before its -m"),
    ("-s 10.0.0.1 -j ACCEPT", "unknown option -s"),
    ("-j NFLOG --nflog-group 1", "unknown target 'NFLOG'"),
    ("-j MARK --set-mark 1", "unknown target 'MARK'"),
    ("-g ACCEPT", "unknown target 'ACCEPT'"),
    ("! -m comment --comment x -j ACCEPT", "'!' before -m"),
    ("-p tcp -p udp -j ACCEPT", "-p given twice"),
    ("-m state --state NEW -m state --state INVALID -j ACCEPT", "-m state given twice"),
    ("-m state --state BOGUS -j ACCEPT", "names a state outside"),
    ("-m iprange -j ACCEPT", "-m iprange without its options"),
    ("-m iprange --dst-range 10.0.0.9-10.0.0.1 -j ACCEPT", "first to last"),
    ("-m iprange --dst-range 10.0.0.1-fd00::1 -j ACCEPT", "first to last"),
    ("-d 10.0.0.0/33 -j ACCEPT", "not a network"),
    ("-d 10.0.0.0/8 -m iprange --dst-range fd00::1-fd00::2 -j ACCEPT", "two families"),
    ("-p tcp -m tcp --dport 90:80 -j ACCEPT", "starts after it ends"),
    ("-p tcp -m tcp --dport http -j ACCEPT", "not a number"),
    ("-p icmp -m icmp --icmp-type echo-request -j ACCEPT", "not a number"),
    ("-p sctp -j ACCEPT", "protocol 'sctp'"),
    ("-m limit --limit fast -j LOG", "not a rate"),
    ("-m hashlimit --hashlimit-name h -j REJECT", "without --hashlimit-above"),
    ("-j REJECT --reject-with tcp-reset", "--reject-with tcp-reset"),
    ("-j ACCEPT --log-prefix x", "--log-prefix without -j LOG"),
    ("-j ACCEPT -p tcp", "-p after the target"),
    ("-p tcp", "no target"),
    ("-p", "-p without a value"),
]


@pytest.mark.parametrize(("rule", "reason"), REFUSED)
def test_anything_outside_the_grammar_is_refused_naming_chain_and_rule(rule: str, reason: str) -> None:
    t = FakeTable()
    t.chains["asg-x"] = [f"-A asg-x {rule}"]  # written as is: the fake would refuse some of these
    with pytest.raises(WalkError, match=reason) as err:
        walk(t, "asg-x", tcp())
    assert err.value.chain == "asg-x" and err.value.rule == f"-A asg-x {rule}" and "asg-x" in str(err.value)


def test_a_rule_of_the_other_family_a_missing_chain_and_a_foreign_line_are_refused() -> None:
    t = table({"t": ["-d 10.0.0.0/8 -j REJECT --reject-with icmp-port-unreachable"]})
    with pytest.raises(WalkError, match="an IPv4 rule met an IPv6 packet"):
        walk(t, "t", tcp("fd00::1"))
    with pytest.raises(WalkError, match="no such chain"):
        walk(t, "nowhere", tcp())
    t.chains["u"] = ["-A u -j gone"]
    with pytest.raises(WalkError, match="no chain 'gone'"):
        walk(t, "u", tcp())
    t.chains["v"] = ["-A w -j ACCEPT"]
    with pytest.raises(WalkError, match="does not start with '-A v '"):
        walk(t, "v", tcp())
    t.chains["q"] = ['-A q -m comment --comment "open -j ACCEPT']
    with pytest.raises(WalkError, match="cannot split"):
        walk(t, "q", tcp())


@pytest.mark.parametrize("verb", ["-j", "-g"])
def test_a_loop_is_refused_not_followed(verb: str) -> None:
    t = table({"a": [f"-p udp {verb} b", "-j ACCEPT"], "b": [f"{verb} c"], "c": [f"{verb} a"]})
    assert walk(t, "a", tcp()).verdict is Verdict.ACCEPT  # the loop is not on this packet's way
    with pytest.raises(WalkError, match="a loop: a is already on the way") as err:
        walk(t, "a", udp())
    assert err.value.chain == "c"


def test_a_chain_may_be_entered_again_after_it_returned() -> None:
    t = table({"once": ["-p udp -j DROP"], "e": ["-j once", "-j once", "-j ACCEPT"]})
    assert walk(t, "e", tcp()) == Walk(Verdict.ACCEPT, 5, ("e", "once", "once"))


def test_too_many_chain_entries_are_refused() -> None:
    depth = MAX_ENTRIES.bit_length()  # each chain enters the next twice: 2**depth entries
    chains = {f"c{i}": [f"-j c{i + 1}", f"-j c{i + 1}"] for i in range(depth)}
    chains[f"c{depth}"] = []
    with pytest.raises(WalkError, match=f"more than {MAX_ENTRIES} chain entries"):
        walk(table(chains), "c0", tcp())


@pytest.mark.parametrize("kwargs", [
    {"dst": V4("10.0.0.1"), "protocol": Proto.ALL},
    {"dst": V4("10.0.0.1"), "protocol": Proto.TCP},
    {"dst": V4("10.0.0.1"), "protocol": Proto.TCP, "port": 65536},
    {"dst": V4("10.0.0.1"), "protocol": Proto.UDP, "port": 53, "icmp_type": 8},
    {"dst": V4("10.0.0.1"), "protocol": Proto.ICMP, "icmp_type": 8},
    {"dst": V4("10.0.0.1"), "protocol": Proto.ICMP, "icmp_code": 0},
    {"dst": V4("10.0.0.1"), "protocol": Proto.ICMP, "icmp_type": 256, "icmp_code": 0},
    {"dst": V4("10.0.0.1"), "protocol": Proto.ICMP, "icmp_type": 8, "icmp_code": 0, "port": 1},
    {"dst": V6("fd00::1"), "protocol": Proto.ICMP, "icmp_type": 8, "icmp_code": 0},
    {"dst": V4("10.0.0.1"), "protocol": Proto.ICMPV6, "icmp_type": 128, "icmp_code": 0},
])
def test_a_packet_is_one_a_rule_can_meet(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Packet(**kwargs)
