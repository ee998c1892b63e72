"""Chain names and the argv of every iptables rule kind a container's chains hold.

Names and argv tokens match silk-cni and the Go vxlan-policy-agent exactly
(DESIGN.md §3.5), so that tables written by either look the same to operators
and to tools that grep them. iptables limits chain names to 28 characters.

This module owns the chain name space: every prefix and suffix, every name
derivation and every ownership predicate ("is this an ASG chain", "is this a parent",
"which chains does the agent track") is defined here and imported by the CNI, the
agent's dataplane and the ``iptables-save`` reader, so that they cannot disagree:

* ``netout--<h>`` — a container's parent chain, created by the CNI
  (:func:`netout_chain_name`, :func:`is_parent_chain`);
* ``asg-<h>`` — its ASG chain, written by the agent (:func:`asg_chain_name`), and
  ``casg-<h>``, the Go agent's candidate chain, swept as a leftover
  (:func:`candidate_chain_name`); both are "owned" (:func:`is_owned_chain`);
* ``netout--<h>--log`` and ``netout--<h>--rl-log`` — its helper log chains
  (:func:`log_chain_name`, :func:`rate_limit_log_chain_name`, :func:`is_helper_chain`);
* ``asgs-<hash>`` — a shared chain (the ``shared`` layout): one security group's accept
  rules in one family, named by the hash of its content (:func:`shared_chain_name`,
  :func:`is_shared_chain`), jumped to by every ASG chain granted them; owned too;
* all of the above are "tracked": the agent reads their rules and references
  (:func:`is_tracked_chain`). Helper and shared chains are "dependent": they live as
  long as an ASG chain refers to them (:func:`is_dependent_chain`).

Names keep only a handle's first characters, so two handles can share one: the
one definition of "a container's chain names" (:func:`chain_names`) and of "two
containers collide" (:func:`collide`) is here, for the CNI (which refuses an ADD
that would share) and the agent (which refuses to write a container that would).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable

from dynamic_asgs.asg.model import ANY, IPRange, PortRange

__all__ = [
    "ASG_PREFIX",
    "CANDIDATE_PREFIX",
    "HELPER_SUFFIXES",
    "MAX_CHAIN_NAME",
    "NETOUT_PREFIX",
    "OWNED_PREFIXES",
    "SHARED_PREFIX",
    "TRACKED_PREFIXES",
    "Argv",
    "accept",
    "asg_chain_name",
    "candidate_chain_name",
    "chain_names",
    "collide",
    "conn_limit",
    "deny_log",
    "deny_network",
    "invalid_drop",
    "is_dependent_chain",
    "is_helper_chain",
    "is_owned_chain",
    "is_parent_chain",
    "is_shared_chain",
    "is_tracked_chain",
    "jump",
    "log_chain_name",
    "log_chain_rules",
    "netout_chain_name",
    "rate_limit_log_chain_name",
    "rate_limit_log_chain_rules",
    "reject",
    "related_established",
    "shared_chain_digest",
    "shared_chain_name",
]

Argv = tuple[str, ...]
MAX_CHAIN_NAME = 28
_LOG_PREFIX_MAX = 28

#: A container's parent chain (the CNI's), and the stem of its helper log chains.
NETOUT_PREFIX = "netout--"
#: A container's ASG chain (ours, and silk's / the Go agent's).
ASG_PREFIX = "asg-"
#: The Go agent's candidate ASG chain (built beside the live one, then renamed): a leftover to sweep.
_CANDIDATE_MARK = "c"
CANDIDATE_PREFIX = _CANDIDATE_MARK + ASG_PREFIX
_LOG_SUFFIX = "log"
_RATE_LIMIT_LOG_SUFFIX = "rl-log"
#: How a helper log chain's name ends (after its ``netout--`` stem).
HELPER_SUFFIXES = (f"--{_LOG_SUFFIX}", f"--{_RATE_LIMIT_LOG_SUFFIX}")
#: A shared chain: one security group's accept rules, named by their content hash. ``asgs-`` is not
#: ``asg-``: silk's tools, which own ``asg-*`` names, never take one for a container's chain.
SHARED_PREFIX = "asgs-"
_SHARED_DIGEST_LENGTH = 16
#: Chains the agent writes and deletes as orphans: ASG chains, Go candidates, shared chains.
OWNED_PREFIXES = (ASG_PREFIX, CANDIDATE_PREFIX, SHARED_PREFIX)
#: Chains whose rules and references the agent reads back (:mod:`dynamic_asgs.iptables.saved`).
TRACKED_PREFIXES = (*OWNED_PREFIXES, NETOUT_PREFIX)


def netout_chain_name(handle: str) -> str:
    """The container's parent chain, created by the CNI: ``netout--<handle>`` cut to 28."""
    return f"{NETOUT_PREFIX}{handle}"[:MAX_CHAIN_NAME]


def _postfix(body: str, suffix: str) -> str:
    return f"{body[: MAX_CHAIN_NAME - len(suffix) - 2]}--{suffix}"


def log_chain_name(handle: str) -> str:
    """The container's ASG log chain: ``netout--<handle cut to 23>--log``."""
    return _postfix(netout_chain_name(handle), _LOG_SUFFIX)


def rate_limit_log_chain_name(handle: str) -> str:
    """The container's outbound-connection-limit log chain (``...--rl-log``)."""
    return _postfix(netout_chain_name(handle), _RATE_LIMIT_LOG_SUFFIX)


def asg_chain_name(handle: str) -> str:
    """``asg-`` + the handle without a leading ``check-`` and without dashes, cut to 20."""
    return ASG_PREFIX + handle.removeprefix("check-").replace("-", "")[:20]


def candidate_chain_name(handle: str) -> str:
    """The Go agent's candidate ASG chain for the container: ``c`` + its ASG chain name."""
    return _CANDIDATE_MARK + asg_chain_name(handle)


def shared_chain_name(version: int, rules: Iterable[Argv]) -> str:
    """The shared chain holding ``rules`` in family ``version``: ``asgs-`` + 16 hex digits of their hash.

    The name is the content: two groups with the same rules share one chain, and a chain
    is never changed in place (new content, new name)."""
    hasher = hashlib.sha256(f"IPv{version}\n".encode())
    for argv in rules:
        hasher.update(("\x1f".join(argv) + "\n").encode())
    return SHARED_PREFIX + hasher.hexdigest()[:_SHARED_DIGEST_LENGTH]


def shared_chain_digest(name: str) -> str:
    """The content hash a shared chain's name carries (and its first rule's hash comment)."""
    return name[len(SHARED_PREFIX):]


def chain_names(handle: str, *, rate_limit_log: bool = True) -> tuple[str, ...]:
    """Every chain a container's chains may use, referrers first: netout, ASG, log, rate-limit log.

    The rate-limit log chain keeps only a handle's first 12 characters; it exists only
    when outbound connection limits are logged, so ``rate_limit_log=False`` leaves it out.
    """
    names = (netout_chain_name(handle), asg_chain_name(handle), log_chain_name(handle))
    return (*names, rate_limit_log_chain_name(handle)) if rate_limit_log else names


def collide(handle: str, other: str, *, rate_limit_log: bool = True) -> bool:
    """Whether two different containers would share a chain name (of any kind they use)."""
    return handle != other and not set(chain_names(handle, rate_limit_log=rate_limit_log)).isdisjoint(
        chain_names(other, rate_limit_log=rate_limit_log))


def is_owned_chain(name: str) -> bool:
    """Whether a chain is ours to delete: an ASG chain (or a Go agent's candidate ``casg-``), or a shared chain."""
    return name.startswith(OWNED_PREFIXES)


def is_shared_chain(name: str) -> bool:
    """Whether ``name`` is a shared chain (``asgs-<hash>``)."""
    return name.startswith(SHARED_PREFIX)


def is_tracked_chain(name: str) -> bool:
    """Whether the agent reads a chain's rules and references: an ASG chain or any ``netout--`` chain."""
    return name.startswith(TRACKED_PREFIXES)


def is_helper_chain(name: str) -> bool:
    """Whether ``name`` is a container's ASG log chain (``netout--<h>--log`` or ``--rl-log``)."""
    return name.startswith(NETOUT_PREFIX) and name.endswith(HELPER_SUFFIXES)


def is_dependent_chain(name: str) -> bool:
    """Whether ``name`` lives only while an ASG chain refers to it: a helper log chain or a shared chain."""
    return is_helper_chain(name) or is_shared_chain(name)


def is_parent_chain(name: str) -> bool:
    """Whether ``name`` is a container's parent chain (``netout--<h>``, not one of its log chains)."""
    return name.startswith(NETOUT_PREFIX) and not is_helper_chain(name)


def _reject_with(version: int) -> str:
    return "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"


def _log_prefix(text: str) -> str:
    # silk's trimAndPad: at most 28 characters and a trailing space, so the kernel
    # log line separates the prefix from the packet fields.
    return text[:_LOG_PREFIX_MAX] + " "


def related_established() -> Argv:
    return ("-m", "state", "--state", "RELATED,ESTABLISHED", "--jump", "ACCEPT")


def invalid_drop() -> Argv:
    return ("-p", "tcp", "-m", "state", "--state", "INVALID", "--jump", "DROP")


def reject(version: int) -> Argv:
    return ("--jump", "REJECT", "--reject-with", _reject_with(version))


def jump(chain: str) -> Argv:
    return ("-j", chain)


def deny_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Argv:
    return ("-d", str(network), "--jump", "REJECT", "--reject-with", _reject_with(network.version))


def conn_limit(handle: str, rate_per_sec: int, burst: int, target: str) -> Argv:
    """silk's outbound connection rate limit: new TCP connections above the rate go to ``target``."""
    expire_ms = math.ceil(burst / rate_per_sec) * 1000
    return (
        "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW",
        "-m", "hashlimit", "--hashlimit-above", f"{rate_per_sec}/sec", "--hashlimit-burst", str(burst),
        "--hashlimit-mode", "dstip,dstport", "--hashlimit-name", handle,
        "--hashlimit-htable-expire", str(expire_ms), "-j", target,
    )  # fmt: skip


def deny_log(handle: str, per_sec: int, prefix: str = "DENY") -> Argv:
    return (
        "-m", "limit", "--limit", f"{per_sec}/s", "--limit-burst", str(per_sec),
        "--jump", "LOG", "--log-prefix", _log_prefix(f"{prefix}_{handle}"),
    )  # fmt: skip


def _target(log_chain: str | None) -> Argv:
    return ("-g", log_chain) if log_chain else ("--jump", "ACCEPT")


def _icmp_type(icmp_type: int, icmp_code: int) -> str:
    # Type 255 is "any type" to the kernel. A code of 255 (CC's -1, "any code")
    # is written without a code, i.e. codes 0-255: "T/255" would match only
    # code 255 (the Go agent writes that and so never matches, e.g., 8/-1).
    if icmp_type == ANY or icmp_code != ANY:
        return f"{icmp_type}/{icmp_code}"
    return str(icmp_type)


def accept(
    protocol: str,
    destination: IPRange,
    *,
    ports: PortRange | None = None,
    icmp: tuple[int, int] | None = None,
    log_chain: str | None = None,
) -> Argv:
    """One accept rule for one destination range (and one port range or ICMP type/code).

    ``protocol`` is ``tcp``, ``udp``, ``icmp``, ``icmpv6`` or ``all``; with
    ``log_chain`` the rule jumps (``-g``) to the container's log chain instead of
    accepting directly.
    """
    dst = ("-m", "iprange")
    match: Argv
    if protocol == "all":
        return (*dst, "--dst-range", str(destination), *_target(log_chain))
    if protocol in ("tcp", "udp"):
        assert ports is not None
        match = ("-m", protocol, "--destination-port", str(ports))
        return (*dst, "-p", protocol, "--dst-range", str(destination), *match, *_target(log_chain))
    assert icmp is not None
    icmp_type, icmp_code = icmp
    if protocol == "icmp":
        match = ("-m", "icmp", "--icmp-type", _icmp_type(icmp_type, icmp_code))
        return (*dst, "-p", "icmp", "--dst-range", str(destination), *match, *_target(log_chain))
    # icmpv6: ip6tables has no "any" type, so type 255 means no type match at all.
    match = () if icmp_type == ANY else ("-m", "icmp6", "--icmpv6-type", _icmp_type(icmp_type, icmp_code))
    return (*dst, "-p", "ipv6-icmp", "--dst-range", str(destination), *match, *_target(log_chain))


def log_chain_rules(handle: str, accepted_udp_logs_per_sec: int) -> tuple[Argv, ...]:
    """The log chain's content (as silk-cni creates it): log new flows, then accept."""
    prefix = _log_prefix(f"OK_{handle}")
    rate = accepted_udp_logs_per_sec
    return (
        ("!", "-p", "udp", "-m", "conntrack", "--ctstate", "INVALID,NEW,UNTRACKED",
         "-j", "LOG", "--log-prefix", prefix),
        ("-p", "udp", "-m", "limit", "--limit", f"{rate}/s", "--limit-burst", str(rate),
         "-j", "LOG", "--log-prefix", prefix),
        ("--jump", "ACCEPT"),
    )  # fmt: skip


def rate_limit_log_chain_rules(handle: str, denied_logs_per_sec: int, version: int) -> tuple[Argv, ...]:
    """The rate-limit log chain's content: log the refused connection, then reject."""
    return (deny_log(handle, denied_logs_per_sec, prefix="DENY_ORL"), reject(version))
