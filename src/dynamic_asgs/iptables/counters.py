"""Packet counters of chains' final rules, from ``iptables-save -c`` (denied egress, issue 14).

Every ASG chain ends with ``-j REJECT`` (DESIGN.md §3.5): what reaches it is egress the
container's security groups refuse. ``iptables-save -c`` prefixes each rule with
``[packets:bytes]``; :func:`parse_final_rejects` streams a save and keeps, per chain with
the given prefix, the packet counter of its last rule when that rule rejects. Nothing
else of a rule is read.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["parse_final_rejects"]


def parse_final_rejects(lines: Iterable[str], prefix: str) -> dict[str, int]:
    """Per chain named ``prefix...``, the packets its final ``REJECT`` counted (chains ending otherwise: absent)."""
    last: dict[str, int | None] = {}
    for line in lines:
        if not line.startswith("["):
            if line.startswith("COMMIT"):
                break
            continue
        close = line.find("] -A ")
        if close < 0:
            continue
        rest = line[close + 5:]
        chain, _, rule = rest.partition(" ")
        if not chain.startswith(prefix):
            continue
        packets = line[1:close].partition(":")[0]
        rejects = " -j REJECT" in f" {rule}" and packets.isdigit()
        last[chain] = int(packets) if rejects else None
    return {chain: count for chain, count in last.items() if count is not None}
