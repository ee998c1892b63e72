"""Every vector of tests/data/conformance/asg_iptables_vectors.json (facts from silk-release, copied
from ../shared/conformance so that a clone anywhere runs them).

* parser vectors (``expected_parsed``) against our parser;
* argv vectors against the argv we generate;
* ``iptables -S`` vectors against a real table in a network namespace, loaded from
  ``dynamic-asgs translate`` output with ``iptables-restore``, legacy and nft.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.parse import parse_destinations, parse_ports, parse_rule
from dynamic_asgs.asg.translate import accept_rules
from dynamic_asgs.errors import RuleError
from support.env import IPTABLES_BACKENDS, require_backend
from support.netns import iptables, netns, restore
from support.translate import DATA, internal_group, store_entry, strip_comments, translate

VECTORS_FILE = DATA / "conformance" / "asg_iptables_vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text())


def by_kind(kind: str) -> list[Any]:
    out = []
    for v in VECTORS:
        fmt = v.get("expected_format", "")
        if "expected_parsed" in v:
            k = "parsed"
        elif fmt.startswith("exact argv") or fmt.startswith("each input yields"):
            k = "argv"
        else:
            k = "dash-s"
        if k == kind:
            out.append(pytest.param(v, id=v["id"]))
    return out


def test_the_vector_file_is_there_and_every_vector_is_classified() -> None:
    assert len(VECTORS) >= 10
    assert sum(len(by_kind(k)) for k in ("parsed", "argv", "dash-s")) == len(VECTORS)


def garden_to_asg(rule: dict[str, Any]) -> dict[str, Any]:
    """silk's garden.NetOutRule (the Go side's parsed form) as the ASG rule it stands for."""
    out: dict[str, Any] = {"protocol": rule["Protocol"],
                           "destination": ",".join(f"{n['Start']}-{n['End']}" for n in rule["Networks"])}
    if rule.get("Ports"):
        out["ports"] = ",".join(f"{p['Start']}-{p['End']}" for p in rule["Ports"])
    if rule.get("ICMPs"):
        out["type"], out["code"] = rule["ICMPs"]["Type"], rule["ICMPs"]["Code"]
    return out


@pytest.mark.parametrize("vector", by_kind("parsed"))
def test_parser_vectors(vector: dict[str, Any]) -> None:
    for raw, expected in zip(vector["asg_rule"], vector["expected_parsed"], strict=True):
        if vector["id"].startswith("sgr-dest"):
            assert [str(r) for r in parse_destinations(raw["destination"])] == expected
        elif vector["id"].startswith("sgr-icmp"):
            rule = parse_rule({"protocol": "icmp", **raw}, group="g", index=0)
            assert f"{rule.icmp_type}/{rule.icmp_code}" == expected
        elif vector["id"].startswith("sgr-ports"):
            assert [str(r) for r in parse_ports(raw["ports"])] == expected
        else:
            pytest.fail(f"unknown parser vector {vector['id']}")


@pytest.mark.parametrize("vector", by_kind("argv"))
def test_argv_vectors(vector: dict[str, Any]) -> None:
    inputs = vector["asg_rule"] if isinstance(vector["asg_rule"], list) else [vector["asg_rule"]]
    expected = vector["expected_iptables_args"]
    if not expected or not isinstance(expected[0], list) or expected == [[]] * len(inputs):
        # One expectation per input (each yields [] and an error).
        assert len(expected) == len(inputs)
        for raw, want in zip(inputs, expected, strict=True):
            with pytest.raises(RuleError) as info:
                parse_rule(garden_to_asg(raw), group="g", index=0)
            assert info.value.field == "ports"
            assert want == []
        return
    raw = vector.get("derived_asg_rule_equivalent") or garden_to_asg(inputs[0])
    rule = parse_rule(raw, group="g", index=0)
    got = accept_rules([rule], 4, None)
    assert sorted(map(list, got)) == sorted(expected)  # ConsistOf: order not asserted


def dash_s_case(vector: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """(groups, container, parent chain name) for an ``iptables -S`` vector."""
    vid = vector["id"]
    if vid == "cni-it-full-chain-order":
        rules = vector["derived_asg_rule_equivalent"]["rules"]
        handle = "some-container-id-that-is-long"
        return [internal_group("sg", rules, running_default=True)], store_entry(handle), handle
    rules = [vector["asg_rule"]] if vector["asg_rule"] else []
    if "staging_default=true" in vector["context"]:
        group = internal_group("public_networks", rules, staging_default=True, running_default=True)
    else:
        group = internal_group("security-group-1", rules, running_space_guids=["some-space"])
    return [group], store_entry("some-handle"), "some-handle"


@pytest.mark.parametrize("backend", IPTABLES_BACKENDS)
@pytest.mark.parametrize("vector", by_kind("dash-s"))
def test_iptables_dash_s_vectors(vector: dict[str, Any], backend: str, tmp_path: Path) -> None:
    require_backend(backend)
    groups, container, handle = dash_s_case(vector)
    status, out, err = translate(tmp_path, {"security_groups": groups}, container, "--family", "4",
                                 "--layout", "per-container")  # silk's layout: the vectors are its facts
    assert status == 0, err
    parent = chains.netout_chain_name(handle)
    asg = chains.asg_chain_name(handle)
    with netns("cf") as ns:
        # As on a cell: the CNI's parent chain exists first (with pre-ASG static rules).
        seed = "\n".join([
            "*filter", f":{parent} - [0:0]",
            f"-A {parent} -m state --state RELATED,ESTABLISHED -j ACCEPT",
            f"-A {parent} -p tcp -m state --state INVALID -j DROP",
            f"-A {parent} -m iprange --dst-range 11.0.0.0-169.253.255.255 -j ACCEPT",
            f"-A {parent} -j REJECT --reject-with icmp-port-unreachable", "COMMIT", ""])
        assert restore(ns, backend, 4, seed, "--noflush").returncode == 0
        loaded = restore(ns, backend, 4, out, "--noflush")
        assert loaded.returncode == 0, loaded.stderr
        lines = [strip_comments(x) for x in iptables(ns, backend, 4, "-S").splitlines()]

    expected = vector["expected_iptables_args"]
    if vector["id"] == "cni-it-full-chain-order":
        # The static CNI chain and our ASG chain share the converter and the order.
        name = expected[0].split()[1]
        ours = [x for x in lines if x.startswith(f"-A {asg} ")]
        want = [x.replace(f"-A {name} ", f"-A {asg} ") for x in expected]
        assert any(ours[i:i + len(want)] == want for i in range(len(ours))), "\n".join(ours)
        return
    for pattern in expected:
        regex = re.compile(pattern.replace("netout--some-handle", re.escape(parent)))
        assert any(regex.fullmatch(x) for x in lines), f"{pattern!r} not in:\n" + "\n".join(lines)
    for absent in vector.get("expected_absent_from_parent", []):
        assert absent.replace("netout--some-handle", parent) not in lines
