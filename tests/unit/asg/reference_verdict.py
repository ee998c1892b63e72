"""The verdict a container's egress packet should get, from the security-group model alone.

Written from what the model means (Cloud Foundry's ASG semantics as silk enforces them), not
from :mod:`dynamic_asgs.asg.translate`, so that tables built by the translator can be checked
against it:

* a family in which the container has no ASG chain (IPv4 always has one; IPv6 only when one of
  its groups' rules or one of its deny networks is IPv6) is left to the CNI's parent chain,
  which rejects everything;
* replies (ESTABLISHED, RELATED) are accepted; INVALID tcp packets are dropped;
* the outbound connection limit never refuses a lone packet (see :mod:`dynamic_asgs.iptables.packets`);
* a destination in one of the workload's deny networks is rejected, whatever the groups say;
* a packet that a rule of one of the container's groups allows is accepted; anything else is rejected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from dynamic_asgs.asg.model import ANY, Container, Protocol, Rule, SecurityGroup, Workload
from dynamic_asgs.asg.translate import ChainSettings
from dynamic_asgs.iptables.packets import Packet, Proto, State, Verdict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def granted(groups: Iterable[SecurityGroup], container: Container) -> list[SecurityGroup]:
    """The groups a container gets: running ones for apps and tasks, staging ones for staging, else none."""
    if container.workload in (Workload.APP, Workload.TASK):
        return [g for g in groups if g.running_default or container.space_id in g.running_spaces]
    if container.workload is Workload.STAGING:
        return [g for g in groups if g.staging_default or container.space_id in g.staging_spaces]
    return []


def denied(settings: ChainSettings, workload: Workload) -> list[IPNetwork]:
    nets = settings.deny_networks
    out = list(nets.always)
    if workload in (Workload.APP, Workload.TASK):
        out += nets.running
    elif workload is Workload.STAGING:
        out += nets.staging
    return out


def allows(rule: Rule, packet: Packet) -> bool:
    """Whether ``rule`` lets ``packet`` out (ICMP type 255 is any type, code 255 any code)."""
    dst = int(packet.dst)
    if not any(d.version == packet.dst.version and int(d.start) <= dst <= int(d.end) for d in rule.destinations):
        return False
    if rule.protocol is Protocol.ALL:
        return True
    if Proto(rule.protocol.value) is not packet.protocol:
        return False
    if rule.protocol in (Protocol.TCP, Protocol.UDP):
        assert packet.port is not None
        return any(p.start <= packet.port <= p.end for p in rule.ports)
    if rule.icmp_type == ANY:
        return True
    return packet.icmp_type == rule.icmp_type and rule.icmp_code in (ANY, packet.icmp_code)


def reference_verdict(
    groups: Sequence[SecurityGroup], container: Container, settings: ChainSettings, packet: Packet
) -> Verdict:
    """The verdict for ``packet`` leaving ``container`` in a cell holding ``groups``."""
    version = packet.dst.version
    rules = [r for g in granted(groups, container) for r in g.rules]
    nets = denied(settings, container.workload)
    if not (container.policy_group_id and container.space_id):
        return Verdict.REJECT
    if version == 6 and not any(d.version == 6 for r in rules for d in r.destinations) \
            and not any(n.version == 6 for n in nets):
        return Verdict.REJECT
    if packet.state in (State.ESTABLISHED, State.RELATED):
        return Verdict.ACCEPT
    if packet.state is State.INVALID and packet.protocol is Proto.TCP:
        return Verdict.DROP
    if any(packet.dst in n for n in nets):
        return Verdict.REJECT
    return Verdict.ACCEPT if any(allows(r, packet) for r in rules) else Verdict.REJECT
