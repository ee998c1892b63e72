"""Property tests: valid rules translate and cover exactly their destinations and ports."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dynamic_asgs.asg.parse import parse_cc_group, parse_internal_group, parse_rule
from dynamic_asgs.asg.translate import accept_rules
from dynamic_asgs.errors import RuleError, ValidationError

v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def destination(draw: st.DrawFn, family: st.SearchStrategy[Any]) -> tuple[str, tuple[int, int]]:
    """One destination element and the inclusive integer interval it denotes."""
    a = draw(family)
    kind = draw(st.sampled_from(["ip", "cidr", "range"]))
    if kind == "ip":
        return str(a), (int(a), int(a))
    if kind == "cidr":
        prefix = draw(st.integers(0, a.max_prefixlen))
        net = ipaddress.ip_network(f"{a}/{prefix}", strict=False)
        return f"{a}/{prefix}", (int(net.network_address), int(net.broadcast_address))
    b = draw(family)
    lo, hi = sorted([a, b])
    return f"{lo}-{hi}", (int(lo), int(hi))


@st.composite
def ports(draw: st.DrawFn) -> tuple[str, set[tuple[int, int]]]:
    items = draw(st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 500)), min_size=1, max_size=5))
    text, spans = [], set()
    for start, width in items:
        end = min(start + width, 65535)
        if start == end and draw(st.booleans()):
            text.append(draw(st.sampled_from(["", " "])) + str(start) + draw(st.sampled_from(["", " "])))
        else:
            text.append(f"{start}-{end}")
        spans.add((start, end))
    return ",".join(text), spans


@st.composite
def valid_rule(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[int, int]], set[tuple[int, int]], int]:
    version = draw(st.sampled_from([4, 6]))
    family = v4 if version == 4 else v6
    dests = draw(st.lists(destination(family), min_size=1, max_size=6))
    protocol = draw(st.sampled_from(["tcp", "udp", "all", "icmp" if version == 4 else "icmpv6"]))
    raw: dict[str, Any] = {"protocol": protocol, "destination": ",".join(d for d, _ in dests)}
    spans: set[tuple[int, int]] = set()
    if protocol in ("tcp", "udp"):
        raw["ports"], spans = draw(ports())
    elif protocol.startswith("icmp"):
        raw["type"], raw["code"] = draw(st.integers(-1, 255)), draw(st.integers(-1, 255))
    raw["log"] = draw(st.booleans())
    return raw, [iv for _, iv in dests], spans, version


def _ip_interval(text: str) -> tuple[int, int]:
    a, b = text.split("-") if text.count("-") == 1 else (text, text)
    return int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))


@given(valid_rule())
def test_any_valid_rule_covers_exactly_its_destinations_and_ports(case: Any) -> None:
    raw, intervals, spans, version = case
    rule = parse_rule(raw, group="g", index=0)
    argvs = accept_rules([rule], version, "netout--h--log")
    assert accept_rules([rule], 10 - version, None) == []  # nothing leaks into the other family
    got_pairs = set()
    for argv in argvs:
        dst = _ip_interval(argv[argv.index("--dst-range") + 1])
        port = None
        if "--destination-port" in argv:
            s, e = argv[argv.index("--destination-port") + 1].split(":")
            port = (int(s), int(e))
        got_pairs.add((dst, port))
        assert argv[-2:] == (("-g", "netout--h--log") if raw["log"] else ("--jump", "ACCEPT"))
    want_ports = spans or {None}
    assert got_pairs == {(iv, p) for iv in intervals for p in want_ports}
    assert len(argvs) == len(got_pairs)  # exact duplicates dropped


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=30) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
rule_keys = st.sampled_from(["protocol", "destination", "ports", "type", "code", "log", "description", "x"])
text_like = st.one_of(
    st.sampled_from(["tcp", "udp", "icmp", "icmpv6", "all", "10.0.0.1", "10.0.0.0/8", "::1-::2", "80", "1-2"]),
    st.text(alphabet="0123456789.:/-, abcdef", max_size=25),
)
fuzzy_rule = st.dictionaries(rule_keys, json_values | text_like, max_size=7)


@given(st.one_of(fuzzy_rule, json_values))
def test_invalid_rules_only_ever_raise_rule_error(raw: Any) -> None:
    try:
        rule = parse_rule(raw, group="g", index=0)
    except RuleError:
        return
    for version in (4, 6):
        accept_rules([rule], version, None)


@given(st.dictionaries(st.sampled_from(["guid", "name", "rules", "globally_enabled", "relationships",
                                        "running_default", "staging_default", "running_space_guids",
                                        "staging_space_guids"]), json_values | text_like, max_size=9))
def test_invalid_groups_only_ever_raise_validation_error(raw: Any) -> None:
    for parse in (parse_cc_group, parse_internal_group):
        with contextlib.suppress(ValidationError):
            parse(raw)
