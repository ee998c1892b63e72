"""The CNI's iptables payloads: a container's netout chain, log chain and FORWARD hooks.

Names and rules come from :mod:`dynamic_asgs.asg.chains` (DESIGN.md §3.5), lines from
:mod:`dynamic_asgs.iptables.render`; nothing here runs iptables (the plugin hands these
lines to :class:`~dynamic_asgs.iptables.runner.IptablesRunner`, one restore per family).

* setup: ``netout--<h>`` (a lone REJECT until the agent or the static rules fill it),
  its log chain when ASG logging is on, and ``FORWARD -s <ip> -o <underlay> -j netout--<h>``
  inserted first for every underlay interface, as silk does;
* teardown: built from what the table holds (``iptables-save``), so it is idempotent and
  never refers to a missing chain or rule: the hooks to the netout chain are deleted
  (their saved lines with ``-A`` turned into ``-D``), then the container's chains that
  exist (netout, log chains, a left-over ASG chain) are flushed and deleted. Chain names
  keep only a handle's first characters (:func:`~dynamic_asgs.asg.chains.collide`): the
  chains another live container shares are left alone, and so are its hooks (only
  hooks from the container's own addresses go when its netout chain stays).

Every line is made by :mod:`dynamic_asgs.iptables.render`, which refuses any token that
could leave its place (issue 13).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.chains import Argv
from dynamic_asgs.asg.translate import ChainSettings, FamilyChains
from dynamic_asgs.iptables.render import (
    declare,
    delete_chain,
    delete_saved_rule,
    family_lines,
    flush,
    insert_line,
    rule_line,
)
from dynamic_asgs.iptables.saved import SavedTable

__all__ = ["hook_argv", "hook_source", "missing", "setup_lines", "static_lines", "teardown_lines", "transaction"]


def transaction(lines: Sequence[str]) -> list[str]:
    """A whole ``*filter`` ... ``COMMIT`` payload around ``lines``."""
    return ["*filter", *lines, "COMMIT"]


def hook_source(ip: str, version: int) -> str:
    """The ``-s`` of a hook from ``ip``, as ``iptables-save`` prints it (``<ip>/32``, ``<ip>/128``)."""
    return f"{ip}/{32 if version == 4 else 128}"


def hook_argv(handle: str, ip: str, interface: str, version: int) -> Argv:
    """``-s <ip>/32 -o <interface> -j netout--<h>`` (the form ``iptables-save`` prints back)."""
    return ("-s", hook_source(ip, version), "-o", interface, "-j", chains.netout_chain_name(handle))


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
        body += [insert_line("FORWARD", hook_argv(handle, ip, iface, version)) for iface in interfaces]
    return lines + body


def static_lines(family: FamilyChains) -> list[str]:
    """The planned chains of one family (static rules): declared, hence flushed, and filled."""
    return family_lines(family)


def teardown_lines(handle: str, table: SavedTable, *, shared: Collection[str] = (),
                   sources: Collection[str] = ()) -> list[str]:
    """Delete the container's hooks and chains that ``table`` holds; empty when none is left.

    Chains named in ``shared`` belong to another live container too and stay; when the
    netout chain is one of them, only the hooks from ``sources`` (the container's own
    ``-s`` values, :func:`hook_source`) are deleted.
    """
    netout = chains.netout_chain_name(handle)
    hooks = table.hooks.get(netout, [])
    if netout in shared:
        hooks = [h for h in hooks if any(f" -s {s} " in h for s in sources)]
    present = [c for c in chains.chain_names(handle) if c in table.chains and c not in shared]
    return ([delete_saved_rule(h) for h in hooks] + [flush(c) for c in present]
            + [delete_chain(c) for c in present])


def missing(handle: str, ip: str, interfaces: Sequence[str], version: int, table: SavedTable,
            settings: ChainSettings) -> list[str]:
    """What CHECK misses in ``table``: chains and hooks that setup created (empty: all there)."""
    netout = chains.netout_chain_name(handle)
    wanted = [netout] + ([chains.log_chain_name(handle)] if settings.asg_logging else [])
    problems = [f"IPv{version} chain {c} does not exist" for c in wanted if c not in table.chains]
    if ip:
        hooks = table.hooks.get(netout, [])
        for iface in interfaces:
            src = hook_source(ip, version)
            if not any(f" -s {src} " in f" {h} " and f" -o {iface} " in f" {h} " for h in hooks):
                problems.append(f"IPv{version} FORWARD hook -s {src} -o {iface} -j {netout} does not exist")
    return problems
