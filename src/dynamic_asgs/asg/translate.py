"""Turn a container and the security groups of its cell into its iptables chains.

Goals and the mechanism serving each:

* **Drop-in for silk** — names, rule argv and order follow the Go agent (DESIGN.md §3.5):
  the ASG chain holds RELATED,ESTABLISHED accept, INVALID drop, the optional outbound
  connection limit, the deny networks, the accept rules, an optional DENY log rule and
  a final REJECT. The Go agent inserts its rule list at position 1 one by one, which
  reverses it; we emit the same order.
* **One rule per destination range x port range**, CIDRs as first-last ranges,
  exact duplicates dropped; IPv6 destinations and icmpv6 go to the ip6tables side.
* **Cheap at a thousand containers** — :class:`GroupIndex` resolves which rules
  apply to a (workload, space) once, and caches the generated accept argv, so
  containers that share a space share the work.
* **Kernel rules that grow with distinct groups, not containers x rules** (issue 16) —
  :class:`ChainLayout`. ``per-container`` is silk's layout: each ASG chain holds a copy
  of every accept rule its groups grant. ``shared`` puts each security group's accept
  rules (per family) in one chain named by their content hash
  (:func:`~dynamic_asgs.asg.chains.shared_chain_name`), shared by every container
  granted it; the container's ASG chain keeps what is its own (RELATED,ESTABLISHED,
  INVALID drop, connection limit, deny networks, the rules that go to its own log
  chain, one ``-j`` per shared chain, the DENY log and the final REJECT). Verdicts are
  the same: every accept rule accepts, so only which rules a chain holds matters, not
  their order; a rule with ``log: true`` (or every rule, under global ASG logging) stays
  in the container's chain, before the jumps, so a packet it matches is still logged.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.chains import Argv
from dynamic_asgs.asg.model import Container, Protocol, Rule, SecurityGroup, Workload

__all__ = [
    "Chain",
    "ChainLayout",
    "ChainSettings",
    "ConnLimit",
    "ContainerChains",
    "DenyNetworks",
    "FamilyChains",
    "GroupIndex",
    "accept_rules",
    "plan_container",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: The log chain name accept rules are counted with in the shared layout (never written).
_COUNTING = "counting--log"


@dataclass(frozen=True, slots=True)
class DenyNetworks:
    """Networks no container may reach, whatever its ASGs say (silk-cni's ``deny_networks``)."""

    always: tuple[IPNetwork, ...] = ()
    running: tuple[IPNetwork, ...] = ()
    staging: tuple[IPNetwork, ...] = ()

    def for_workload(self, workload: Workload, version: int) -> tuple[IPNetwork, ...]:
        nets = list(self.always)
        if workload.is_running:
            nets += self.running
        elif workload is Workload.STAGING:
            nets += self.staging
        return tuple(n for n in nets if n.version == version)


@dataclass(frozen=True, slots=True)
class ConnLimit:
    """silk-cni's ``outbound_connections``: new TCP connections per second and burst."""

    rate_per_sec: int
    burst: int
    logging: bool = False


class ChainLayout(enum.StrEnum):
    """Where a container's accept rules live (see the module docstring)."""

    #: Each security group's accept rules in one chain per cell, jumped to by its containers.
    SHARED = "shared"
    #: silk's layout: a copy of every accept rule in each container's ASG chain.
    PER_CONTAINER = "per-container"


@dataclass(frozen=True, slots=True)
class ChainSettings:
    """Cell-wide settings that shape every container's chains.

    ``layout`` defaults to silk's (what a translation of one container means to the CNI
    and the ``translate`` tool); the agent's job property chooses ``shared`` by default.
    """

    deny_networks: DenyNetworks = DenyNetworks()
    asg_logging: bool = False
    denied_logs_per_sec: int = 1
    accepted_udp_logs_per_sec: int = 100
    conn_limit: ConnLimit | None = None
    layout: ChainLayout = ChainLayout.PER_CONTAINER


@dataclass(frozen=True, slots=True)
class Chain:
    """One chain's full content: rule argv without the ``-A <chain>`` prefix."""

    name: str
    rules: tuple[Argv, ...]


@dataclass(frozen=True, slots=True)
class FamilyChains:
    """What one container needs in one family's filter table.

    ``asg`` and ``helpers`` (log chains) are owned outright; ``parent`` is the
    CNI-created ``netout--`` chain whose content (jump + REJECT) we set; ``shared``
    are the shared chains its ASG chain jumps to (the ``shared`` layout), whose names
    are their content hashes. ``accept_count`` is the number of distinct accept rules
    the container is granted, the same in either layout.
    """

    version: int
    asg: Chain
    parent: Chain
    helpers: tuple[Chain, ...] = ()
    accept_count: int = 0
    shared: tuple[Chain, ...] = ()
    #: Where the ASG chain's jumps to ``shared`` start (their index in ``asg.rules``; they are contiguous).
    shared_at: int = 0

    @property
    def chain_names(self) -> frozenset[str]:
        """The chains this container owns alone: ASG chain, parent, helpers (not shared chains)."""
        return frozenset((self.asg.name, self.parent.name, *(h.name for h in self.helpers)))

    @property
    def chains(self) -> tuple[Chain, ...]:
        """The chains this container owns alone, as written: ASG chain, helpers, parent."""
        return (self.asg, *self.helpers, self.parent)

    @property
    def enforcing(self) -> tuple[Chain, ...]:
        """Every chain its packets may traverse: its own and the shared chains it jumps to."""
        return (*self.chains, *self.shared)


@dataclass(frozen=True, slots=True)
class ContainerChains:
    """A container's chains in both families (``v6`` only when it has IPv6 rules)."""

    container: Container
    v4: FamilyChains
    v6: FamilyChains | None = None

    @property
    def families(self) -> tuple[FamilyChains, ...]:
        return (self.v4,) if self.v6 is None else (self.v4, self.v6)

    @property
    def chain_names(self) -> frozenset[str]:
        """The chains the plan writes or fills, in any family: ASG chain, parent, helpers."""
        return frozenset(n for f in self.families for n in f.chain_names)

    @property
    def rule_count(self) -> int:
        """Accept rules across families: what operators see as "the container's rules"."""
        return sum(f.accept_count for f in self.families)


def accept_rules(rules: Iterable[Rule], version: int, log_chain: str | None) -> list[Argv]:
    """The accept argv for ``rules`` in one family, in rule order, exact duplicates dropped.

    ``log_chain`` is the chain that logged rules (or all rules, under global ASG
    logging, when the caller passes it for every rule) jump to.
    """
    out: dict[Argv, None] = {}
    for rule in rules:
        target = log_chain if rule.log else None
        for dst in rule.destinations:
            if dst.version != version:
                continue
            if rule.protocol in (Protocol.TCP, Protocol.UDP):
                for ports in rule.ports:
                    out.setdefault(chains.accept(rule.protocol, dst, ports=ports, log_chain=target))
            elif rule.protocol is Protocol.ALL:
                out.setdefault(chains.accept("all", dst, log_chain=target))
            else:
                assert rule.icmp_type is not None and rule.icmp_code is not None
                icmp = (rule.icmp_type, rule.icmp_code)
                out.setdefault(chains.accept(rule.protocol, dst, icmp=icmp, log_chain=target))
    return list(out)


@dataclass
class GroupIndex:
    """The rules that apply to each (workload, space), from one set of security groups.

    Running workloads (app, task) get the globally enabled running groups plus the
    groups bound to their space for running; staging likewise; any other workload
    gets nothing (all egress denied). Build one per dataset; it memoises.
    """

    groups: Sequence[SecurityGroup]
    _running: dict[str, list[Rule]] = field(default_factory=dict, init=False, repr=False)
    _staging: dict[str, list[Rule]] = field(default_factory=dict, init=False, repr=False)
    _default_running: list[Rule] = field(default_factory=list, init=False, repr=False)
    _default_staging: list[Rule] = field(default_factory=list, init=False, repr=False)
    _accepts: dict[tuple[object, ...], tuple[Argv, ...]] = field(default_factory=dict, init=False, repr=False)
    _groups: dict[tuple[bool, str], list[SecurityGroup]] = field(default_factory=dict, init=False, repr=False)
    _group_chains: dict[tuple[int, int], Chain | None] = field(default_factory=dict, init=False, repr=False)
    _shared: dict[tuple[object, ...], tuple[Chain, ...]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for group in self.groups:
            if group.running_default:
                self._default_running.extend(group.rules)
            if group.staging_default:
                self._default_staging.extend(group.rules)
            if not group.running_default:
                for space in group.running_spaces:
                    self._running.setdefault(space, []).extend(group.rules)
            if not group.staging_default:
                for space in group.staging_spaces:
                    self._staging.setdefault(space, []).extend(group.rules)

    def rules_for(self, workload: Workload, space: str) -> list[Rule]:
        """Every rule that applies to a container of ``workload`` in ``space``."""
        if workload.is_running:
            return self._default_running + self._running.get(space, [])
        if workload is Workload.STAGING:
            return self._default_staging + self._staging.get(space, [])
        return []

    def groups_for(self, workload: Workload, space: str) -> list[SecurityGroup]:
        """The groups granted to a container of ``workload`` in ``space`` (memoised).

        Default groups first, then the space's, each in dataset order: the order of ``rules_for``,
        so both layouts evaluate a packet's candidate rules in the same order.
        """
        if not (workload.is_running or workload is Workload.STAGING):
            return []
        running = workload.is_running
        found = self._groups.get((running, space))
        if found is None:
            if running:
                found = [g for g in self.groups if g.running_default]
                found += [g for g in self.groups if not g.running_default and space in g.running_spaces]
            else:
                found = [g for g in self.groups if g.staging_default]
                found += [g for g in self.groups if not g.staging_default and space in g.staging_spaces]
            self._groups[(running, space)] = found
        return found

    def shared_for(self, workload: Workload, space: str, version: int) -> tuple[Chain, ...]:
        """The shared chains a container jumps to, in chain order (the groups' reverse order, as the rules).

        One chain per group with accept rules in the family that are not logged (a logged
        rule needs the container's own log chain); groups of the same content share one.
        """
        key = (workload.is_running, workload is Workload.STAGING, space, version)
        found = self._shared.get(key)
        if found is None:
            out: dict[str, Chain] = {}
            for group in self.groups_for(workload, space):  # of two groups alike the first counts, as for rules
                chain = self._group_chain(group, version)
                if chain is not None:
                    out.setdefault(chain.name, chain)
            found = self._shared[key] = tuple(reversed(out.values()))
        return found

    def _group_chain(self, group: SecurityGroup, version: int) -> Chain | None:
        key = (id(group), version)  # self.groups keeps every group alive: ids are not reused
        if key not in self._group_chains:
            rules = tuple(reversed(accept_rules([r for r in group.rules if not r.log], version, None)))
            self._group_chains[key] = Chain(chains.shared_chain_name(version, rules), rules) if rules else None
        return self._group_chains[key]

    def accepts_for(
        self, workload: Workload, space: str, version: int, log_chain: str, global_logging: bool
    ) -> tuple[Argv, ...]:
        """The (memoised) accept argv of a container, in chain order."""
        rules = self.rules_for(workload, space)
        logs = global_logging or any(r.log for r in rules)
        kind = "running" if workload.is_running else workload.value
        key = (kind, space, version, log_chain if logs else None, global_logging)
        cached = self._accepts.get(key)
        if cached is None:
            if global_logging:
                rules = [r if r.log else _logged(r) for r in rules]
            # The Go agent inserts its list at position 1 rule by rule: reversed.
            cached = tuple(reversed(accept_rules(rules, version, log_chain if logs else None)))
            self._accepts[key] = cached
        return cached

    def logged_for(self, workload: Workload, space: str, version: int, log_chain: str) -> tuple[Argv, ...]:
        """The accept argv of a container's logged rules (they go to its own log chain), in chain order."""
        kind = "running" if workload.is_running else workload.value
        key = ("logged", kind, space, version, log_chain)
        cached = self._accepts.get(key)
        if cached is None:
            logged = [r for r in self.rules_for(workload, space) if r.log]
            cached = tuple(reversed(accept_rules(logged, version, log_chain))) if logged else ()
            self._accepts[key] = cached
        return cached


def _logged(rule: Rule) -> Rule:
    return Rule(
        rule.protocol, rule.destinations, rule.ports, rule.icmp_type, rule.icmp_code, True, rule.description
    )


def _family(
    container: Container, accepts: tuple[Argv, ...], settings: ChainSettings, version: int,
    shared: tuple[Chain, ...] = (), accept_count: int | None = None,
) -> FamilyChains:
    handle = container.handle
    asg = chains.asg_chain_name(handle)
    log_chain = chains.log_chain_name(handle)
    body: list[Argv] = [chains.related_established(), chains.invalid_drop()]
    helpers: list[Chain] = []
    limit = settings.conn_limit
    if limit is not None:
        target = "REJECT"
        if limit.logging:
            target = chains.rate_limit_log_chain_name(handle)
            rl_rules = chains.rate_limit_log_chain_rules(handle, settings.denied_logs_per_sec, version)
            helpers.append(Chain(target, rl_rules))
        body.append(chains.conn_limit(handle, limit.rate_per_sec, limit.burst, target))
    denied = settings.deny_networks.for_workload(container.workload, version)
    body.extend(chains.deny_network(net) for net in reversed(denied))
    body.extend(accepts)
    shared_at = len(body)
    body.extend(chains.jump(chain.name) for chain in shared)
    if settings.asg_logging:
        body.append(chains.deny_log(handle, settings.denied_logs_per_sec))
    body.append(chains.reject(version))
    if any(a[-2:] == ("-g", log_chain) for a in accepts):
        helpers.insert(0, Chain(log_chain, chains.log_chain_rules(handle, settings.accepted_udp_logs_per_sec)))
    parent = Chain(chains.netout_chain_name(handle), (chains.jump(asg), chains.reject(version)))
    count = len(accepts) if accept_count is None else accept_count
    return FamilyChains(version, Chain(asg, tuple(body)), parent, tuple(helpers), count, shared, shared_at)


def plan_container(
    container: Container, groups: GroupIndex | Sequence[SecurityGroup], settings: ChainSettings
) -> ContainerChains | None:
    """The chains ``container`` must have, or None when it gets no ASG chain.

    A store entry without ``policy_group_id`` is not an app container, and one
    with an empty ``space_id`` gets no ASG chain (both as the Go agent does).
    """
    if not container.policy_group_id or not container.space_id:
        return None
    index = groups if isinstance(groups, GroupIndex) else GroupIndex(groups)
    log_chain = chains.log_chain_name(container.handle)
    workload, space = container.workload, container.space_id
    share = settings.layout is ChainLayout.SHARED and not settings.asg_logging
    families = []
    for version in (4, 6):
        # Shared: the count is the per-container one (any log chain name dedups alike), memoised per space.
        accepts = index.accepts_for(workload, space, version, _COUNTING if share else log_chain, settings.asg_logging)
        denied = settings.deny_networks.for_workload(workload, version)
        if not (version == 4 or accepts or denied):
            continue
        if share:
            shared = index.shared_for(workload, space, version)
            own = index.logged_for(workload, space, version, log_chain)
            families.append(_family(container, own, settings, version, shared, len(accepts)))
        else:
            families.append(_family(container, accepts, settings, version))
    v6 = families[1] if len(families) > 1 else None
    return ContainerChains(container, families[0], v6)
