"""The CNI's iptables payloads: a container's netout chain, log chain and FORWARD hooks.

Names and rules come from :mod:`dynamic_asgs.asg.chains` (DESIGN.md §3.5), lines from
:mod:`dynamic_asgs.iptables.render`; nothing here runs iptables (the plugin hands these
lines to :class:`~dynamic_asgs.iptables.runner.IptablesRunner`, one restore per family).

* setup: ``netout--<h>`` (a lone REJECT until the agent or the static rules fill it),
  its log chain when ASG logging is on, and ``FORWARD -s <ip> -o <underlay> -j netout--<h>``
  inserted first for every underlay interface, as silk does;
* teardown: built from what the table holds (``iptables-save``), so it is idempotent and
  never refers to a missing chain or rule: every hook to the netout chain is deleted
  (its saved line with ``-A`` turned into ``-D``), then the container's chains that
  exist (netout, log chains, a left-over ASG chain) are flushed and deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.chains import Argv
from dynamic_asgs.asg.translate import ChainSettings, FamilyChains
from dynamic_asgs.iptables.render import declare, family_lines, quote, rule_line
from dynamic_asgs.iptables.saved import SavedTable

__all__ = ["container_chains", "hook_argv", "missing", "setup_lines", "static_lines", "teardown_lines", "transaction"]


def transaction(lines: Sequence[str]) -> list[str]:
    """A whole ``*filter`` ... ``COMMIT`` payload around ``lines``."""
    return ["*filter", *lines, "COMMIT"]


def hook_argv(handle: str, ip: str, interface: str, version: int) -> Argv:
    """``-s <ip>/32 -o <interface> -j netout--<h>`` (the form ``iptables-save`` prints back)."""
    return ("-s", f"{ip}/{32 if version == 4 else 128}", "-o", interface, "-j", chains.netout_chain_name(handle))


def setup_lines(handle: str, ip: str, interfaces: Sequence[str], version: int, settings: ChainSettings) -> list[str]:
    """Create (or reset) the netout chain and log chain, and hook the container (no hook without ``ip``)."""
    netout = chains.netout_chain_name(handle)
    lines = [declare(netout)]
    body = [rule_line(netout, chains.reject(version))]
    if settings.asg_logging:
        log = chains.log_chain_name(handle)
        lines.append(declare(log))
        body += [rule_line(log, argv) for argv in chains.log_chain_rules(handle, settings.accepted_udp_logs_per_sec)]
    if ip:
        body += ["-I FORWARD 1 " + " ".join(quote(a) for a in hook_argv(handle, ip, iface, version))
                 for iface in interfaces]
    return lines + body


def static_lines(family: FamilyChains) -> list[str]:
    """The planned chains of one family (static rules): declared, hence flushed, and filled."""
    return family_lines(family)


def container_chains(handle: str) -> tuple[str, ...]:
    """Every chain the CNI or the agent may hold for ``handle``, referrers first."""
    return (chains.netout_chain_name(handle), chains.asg_chain_name(handle), chains.log_chain_name(handle),
            chains.rate_limit_log_chain_name(handle))


def teardown_lines(handle: str, table: SavedTable) -> list[str]:
    """Delete the hooks and the container's chains that ``table`` holds; empty when none is left."""
    present = [c for c in container_chains(handle) if c in table.chains]
    hooks = [f"-D {line[3:]}" for line in table.hooks.get(chains.netout_chain_name(handle), [])]
    return hooks + [f"-F {c}" for c in present] + [f"-X {c}" for c in present]


def missing(handle: str, ip: str, interfaces: Sequence[str], version: int, table: SavedTable,
            settings: ChainSettings) -> list[str]:
    """What CHECK misses in ``table``: chains and hooks that setup created (empty: all there)."""
    netout = chains.netout_chain_name(handle)
    wanted = [netout] + ([chains.log_chain_name(handle)] if settings.asg_logging else [])
    problems = [f"IPv{version} chain {c} does not exist" for c in wanted if c not in table.chains]
    if ip:
        hooks = table.hooks.get(netout, [])
        for iface in interfaces:
            src = hook_argv(handle, ip, iface, version)[1]
            if not any(f" -s {src} " in f" {h} " and f" -o {iface} " in f" {h} " for h in hooks):
                problems.append(f"IPv{version} FORWARD hook -s {src} -o {iface} -j {netout} does not exist")
    return problems
