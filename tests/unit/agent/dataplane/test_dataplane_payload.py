"""The transaction builder: order, the parent guard, line ownership, laziness."""

from __future__ import annotations

import pytest

from dynamic_asgs.agent.dataplane.payload import Owner, OwnerKind, Payload, Write
from dynamic_asgs.asg.translate import ChainSettings
from dynamic_asgs.iptables.render import content_hash
from support.plans import container, groups_for, plan

GROUPS = groups_for({"s": [{"protocol": "tcp", "destination": "10.0.0.1", "ports": "80", "log": True},
                           {"protocol": "udp", "destination": "10.0.0.2", "ports": "53"}]})


def write(handle: str) -> Write:
    family = plan(container(handle, "s"), GROUPS, ChainSettings()).v4
    return Write(handle, family, content_hash(family))


def test_declarations_first_then_rules_then_deletions() -> None:
    payload = Payload(4, [write("a"), write("b")], closes=["netout--gone"], deletes=["casg-gone", "asg-old"])
    lines = list(payload)
    assert lines[0] == "*filter" and lines[-1] == "COMMIT" and len(lines) == len(payload)
    assert lines[1:7] == [":asg-a - [0:0]", ":netout--a--log - [0:0]", ":asg-b - [0:0]", ":netout--b--log - [0:0]",
                          ":casg-gone - [0:0]", ":asg-old - [0:0]"]
    assert lines[7] == "-F netout--a" and lines[8].startswith("-A asg-a -m comment --comment dasg:")
    assert not any(x.startswith(":netout--a ") for x in lines)  # a parent is flushed, never declared
    assert lines[-5:-1] == ["-F netout--gone", "-A netout--gone --jump REJECT --reject-with icmp-port-unreachable",
                            "-X casg-gone", "-X asg-old"]
    assert list(payload) == lines  # re-iterable: the runner reads it twice on a refusal


def test_every_line_has_its_owner() -> None:
    payload = Payload(6, [write("a"), write("b")], closes=["netout--gone"], deletes=["casg-gone"])
    lines = list(payload)
    owners = [payload.owner_of(n) for n in range(1, len(lines) + 1)]
    for line, owner in zip(lines, owners, strict=True):
        assert owner is not None
        if line in ("*filter", "COMMIT"):
            assert owner.kind is OwnerKind.FRAME
        elif line.startswith("-F netout--") and "gone" not in line:
            assert owner == Owner(OwnerKind.GUARD, line[-1])
        elif "netout--gone" in line:
            assert owner.kind in (OwnerKind.CLOSE_GUARD, OwnerKind.CLOSE) and owner.name == "netout--gone"
        elif "casg-gone" in line:
            assert owner == Owner(OwnerKind.DELETE, "casg-gone")
        else:
            chain = line[1:].split()[0] if line.startswith(":") else line.split()[1]
            handle = "a" if chain in ("asg-a", "netout--a", "netout--a--log") else "b"
            kind = OwnerKind.LINK if " -j asgs-" in line else OwnerKind.WRITE  # a jump to a shared chain
            assert owner == Owner(kind, handle), line
    assert payload.owner_of(0) is None and payload.owner_of(len(lines) + 1) is None and payload.owner_of(None) is None


def test_never_an_empty_transaction() -> None:
    with pytest.raises(ValueError, match="empty"):
        Payload(4, [])


def test_a_write_without_a_digest_is_hashed_as_it_streams_and_resolved_once() -> None:
    known, lazy = write("a"), write("b")
    unhashed = Write(lazy.handle, lazy.family, None)
    payload = Payload(4, [known, unhashed])
    assert list(payload) == list(Payload(4, [known, lazy]))  # the same lines, hash comments included
    assert [w.digest for w in payload.resolved()] == [known.digest, lazy.digest]
