"""``iptables-restore --test`` accepts every ``translate`` output, legacy and nft, IPv4 and IPv6."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamic_asgs.asg import chains
from dynamic_asgs.local import examples
from support.env import IPTABLES_BACKENDS, require_backend
from support.netns import iptables, netns, restore
from support.translate import internal_group, store_entry, strip_comments, translate

EXAMPLES = examples.DIRECTORY

FLAG_SETS = [
    [],
    ["--asg-logging"],
    ["--outbound-conn-limit", "100:1000"],
    ["--outbound-conn-limit", "5:7", "--outbound-conn-logging", "--asg-logging", "--denied-logs-per-sec", "2"],
    ["--deny-networks-always", "169.254.0.0/16,fd00::/8", "--deny-networks-running", "10.0.0.0/8",
     "--deny-networks-staging", "172.16.0.0/12"],
]


@pytest.fixture(scope="module", params=IPTABLES_BACKENDS)
def table(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    require_backend(request.param)
    with netns("tr") as ns:
        yield ns, request.param


def sections(text: str) -> dict[int, str]:
    """Split translate output into one restore payload per family."""
    out: dict[int, list[str]] = {}
    current = 0
    for line in text.splitlines():
        if line.startswith("# IPv4"):
            current = 4
        elif line.startswith("# IPv6"):
            current = 6
        if current:
            out.setdefault(current, []).append(line)
    return {v: "\n".join(lines) + "\n" for v, lines in out.items()}


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: " ".join(f) or "defaults")
def test_examples_load_for_real(table: tuple[str, str], flags: list[str], tmp_path: Path) -> None:
    ns, backend = table
    status, out, err = translate(tmp_path, json.loads((EXAMPLES / "security-groups.json").read_text()),
                                 json.loads((EXAMPLES / "container.json").read_text()), *flags)
    assert status == 0, err
    payloads = sections(out)
    assert set(payloads) == {4, 6}
    handle = json.loads((EXAMPLES / "container.json").read_text())["handle"]
    for version, payload in payloads.items():
        result = restore(ns, backend, version, payload, "--noflush")
        assert result.returncode == 0, result.stderr + payload
        listed = iptables(ns, backend, version, "-S", chains.asg_chain_name(handle)).splitlines()
        written = [x for x in payload.splitlines() if x.startswith(f"-A {chains.asg_chain_name(handle)} ")]
        assert len(listed) - 1 == len(written)  # -N line + every rule, nothing lost
        assert all("dasg:" not in strip_comments(x) for x in listed)


ip4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str(n >> s & 255) for s in (24, 16, 8, 0)))
ip6 = st.integers(0, 2**128 - 1).map(lambda n: __import__("ipaddress").IPv6Address(n).compressed)


@st.composite
def rule(draw: st.DrawFn) -> dict[str, Any]:
    six = draw(st.booleans())
    addr = ip6 if six else ip4
    dst = draw(st.one_of(addr, st.tuples(addr, st.integers(0, 128 if six else 32)).map(lambda t: f"{t[0]}/{t[1]}")))
    protocol = draw(st.sampled_from(["tcp", "udp", "all", "icmpv6" if six else "icmp"]))
    out: dict[str, Any] = {"protocol": protocol, "destination": dst, "log": draw(st.booleans())}
    if protocol in ("tcp", "udp"):
        a, b = sorted(draw(st.tuples(st.integers(1, 65535), st.integers(1, 65535))))
        out["ports"] = draw(st.sampled_from([f"{a}", f"{a}-{b}", f"{a},{b}", f"{a}-{b}, {a}"]))
    elif protocol.startswith("icmp"):
        out["type"], out["code"] = draw(st.integers(-1, 255)), draw(st.integers(-1, 255))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rules=st.lists(rule(), max_size=12), flags=st.sampled_from(FLAG_SETS),
       workload=st.sampled_from(["app", "task", "staging", "other"]),
       handle=st.sampled_from(["h1", "check-2f4a-11", "0f3e4c1a-7d39-4b5e-9a51-1c2b3d4e5f60"]))
def test_any_translation_passes_restore_test(table: tuple[str, str], tmp_path: Path, rules: list[dict[str, Any]],
                                             flags: list[str], workload: str, handle: str) -> None:
    ns, backend = table
    groups = {"security_groups": [internal_group("g", rules, running_default=True, staging_default=True)]}
    status, out, err = translate(tmp_path, groups, store_entry(handle, workload=workload), *flags)
    assert status == 0, err
    for version, payload in sections(out).items():
        result = restore(ns, backend, version, payload, "--test", "--noflush")
        assert result.returncode == 0, result.stderr + payload
