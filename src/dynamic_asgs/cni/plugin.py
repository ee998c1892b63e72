"""ADD, DEL and CHECK: the store entry, the chains, and the agent's sync, in silk's order.

* ADD: record the container in the metadata store, unless its chain names are those of
  another container there (:func:`~dynamic_asgs.asg.chains.collide`: refused under the
  store lock, nothing touched, code 104); create its netout chain (a lone
  REJECT), log chain and FORWARD hooks in one ``iptables-restore --noflush`` per family;
  ask the agent to sync it. 405 (ASG syncing disabled): install Garden's static rules
  (one more restore per family). Anything else that is not 200: fail with the agent's
  message, after undoing what ADD did (store entry, chains, hooks). Returns ``prevResult``.
* DEL: remove the store entry, ask the agent to clean up (it removes the ASG chain and
  updates its view; a failed call does not block the deletion: its next cycle sweeps),
  then delete hooks and chains per what the table holds, never a chain another container
  in the store shares, nor then a hook from another address than the container's own
  (its entry's, or prevResult's). Idempotent.
* CHECK: the store entry, the chains and the hooks exist.

Errors of the project's kinds become :class:`~.protocol.CniError` with a code here, at
one boundary (:func:`cni_errors`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dynamic_asgs.asg import chains, grammar
from dynamic_asgs.asg.model import Container
from dynamic_asgs.asg.parse import parse_container
from dynamic_asgs.cni.agent_client import ForceEndpoints
from dynamic_asgs.cni.netout import hook_source, missing, setup_lines, static_lines, teardown_lines, transaction
from dynamic_asgs.cni.protocol import CniError, Code, container_addresses
from dynamic_asgs.cni.settings import CniSettings, request_metadata
from dynamic_asgs.cni.static_rules import parse_net_out_rules, static_plan
from dynamic_asgs.errors import (
    ChainNameCollision,
    ConfigError,
    DynamicASGsError,
    IptablesError,
    LockTimeout,
    StoreError,
    UnsafeFile,
    UpstreamError,
    ValidationError,
)
from dynamic_asgs.iptables.runner import Runner
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import MetadataStore

__all__ = ["Plugin", "cni_errors"]

_CODES: tuple[tuple[type[DynamicASGsError], Code], ...] = (
    (ChainNameCollision, Code.CHAIN_NAME_COLLISION),
    (UnsafeFile, Code.IO_FAILURE),
    (ConfigError, Code.INVALID_CONFIG),
    (ValidationError, Code.INVALID_CONFIG),
    (LockTimeout, Code.TRY_AGAIN_LATER),
    (IptablesError, Code.IPTABLES_FAILED),
    (StoreError, Code.STORE_FAILED),
    (UpstreamError, Code.AGENT_SYNC_FAILED),
)


@contextmanager
def cni_errors(what: str) -> Iterator[None]:
    """Turn the project's errors (and file-system errors) into CniError with a fitting code."""
    try:
        yield
    except CniError:
        raise
    except DynamicASGsError as exc:
        code = next((c for kind, c in _CODES if isinstance(exc, kind)), Code.INTERNAL)
        raise CniError(code, what, str(exc)) from exc
    except OSError as exc:
        raise CniError(Code.IO_FAILURE, what, str(exc)) from exc


class Plugin:
    """One invocation's work, given its settings and seams (runners per family, store, agent)."""

    def __init__(self, *, settings: CniSettings, runners: Mapping[int, Runner], store: MetadataStore,
                 agent: ForceEndpoints, logger: Logger) -> None:
        self.settings = settings
        self.runners = runners
        self.store = store
        self.agent = agent
        self.log = logger

    # -- ADD -------------------------------------------------------------------------------

    def add(self, handle: str, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Record and hook the container, have its rules written; return the result to print."""
        addresses = container_addresses(raw.get("prevResult"))
        metadata = request_metadata(raw)
        runtime = raw.get("runtimeConfig")
        with cni_errors("invalid runtimeConfig.netOutRules"):
            rules = parse_net_out_rules(runtime.get("netOutRules") if isinstance(runtime, Mapping) else None)
        with cni_errors("cannot record the container in the metadata store"):
            self.store.add(handle, addresses.ipv4, metadata, ipv6=addresses.ipv6,
                           check=lambda entries: _refuse_collisions(handle, entries, self._rate_limit_log))
        try:
            container = parse_container({"handle": handle, "ip": addresses.ipv4, "ipv6": addresses.ipv6,
                                         "metadata": metadata})
            with cni_errors("cannot create the container's netout chain"):
                for version in self.settings.versions:
                    ip = addresses.ipv4 if version == 4 else addresses.ipv6
                    self._restore(version, setup_lines(handle, ip, self.settings.underlay_interfaces, version,
                                                       self.settings.chains))
            self._sync(container, rules)
        except BaseException as exc:
            self._undo(handle, (addresses.ipv4, addresses.ipv6), exc)
            raise
        return {**raw["prevResult"], "cniVersion": raw.get("cniVersion")}

    def _sync(self, container: Container, rules: tuple[Any, ...]) -> None:
        with cni_errors("cannot reach the policy agent to sync the container's ASGs"):
            answer = self.agent.sync(container.handle)
        if answer.status == 200:
            return
        if answer.status != 405:
            raise CniError(Code.AGENT_SYNC_FAILED, f"asg sync returned {answer.status} with message: {answer.body}",
                           answer.body)
        self.log.info("asg-syncing-disabled-installing-static-rules", {"handle": container.handle,
                                                                        "rules": len(rules)})
        plan = static_plan(container, rules, self.settings.chains)
        with cni_errors("cannot install the static netOutRules"):
            for family in plan.families:
                if family.version in self.settings.versions:
                    self._restore(family.version, static_lines(family))

    def _undo(self, handle: str, ips: Collection[str], cause: BaseException) -> None:
        """Best effort: leave nothing of a failed ADD behind (the failure itself is what is reported)."""
        try:
            self.store.delete(handle)
            self._teardown(handle, ips)
        except Exception as exc:
            self.log.error("add-undo-incomplete", exc, {"handle": handle, "cause": str(cause)})

    # -- DEL -------------------------------------------------------------------------------

    def delete(self, handle: str, raw: Mapping[str, Any]) -> None:
        """Remove the container's entry, chains and hooks; succeed when they are already gone."""
        with cni_errors("cannot remove the container from the metadata store"):
            entry = self.store.delete(handle)
        try:
            answer = self.agent.cleanup(handle)
            if answer.status not in (200, 405):
                self.log.info("agent-cleanup-deferred", {"handle": handle, "status": answer.status,
                                                         "message": answer.body})
        except UpstreamError as exc:  # the agent's next cycle removes the ASG chain of a missing container
            self.log.info("agent-cleanup-unreachable", {"handle": handle, "error": str(exc)})
        with cni_errors("cannot remove the container's chains"):
            self._teardown(handle, _own_addresses(entry, raw))

    def _teardown(self, handle: str, ips: Collection[str]) -> None:
        """Delete what the table holds of ``handle``, except what a colliding container in the store shares."""
        entries = self.store.read_all()[0] if os.path.lexists(self.store.path) else {}
        rl_log = self._rate_limit_log
        shared = {name for other in entries if chains.collide(handle, other, rate_limit_log=rl_log)
                  for name in chains.chain_names(other, rate_limit_log=rl_log)}
        for version in self.settings.versions:
            sources = [hook_source(ip, version) for ip in ips if ip and (":" in ip) == (version == 6)]
            lines = teardown_lines(handle, self.runners[version].save(), shared=shared, sources=sources)
            if lines:
                self._restore(version, lines)

    # -- CHECK -----------------------------------------------------------------------------

    def check(self, handle: str, raw: Mapping[str, Any]) -> None:
        """Raise CHECK_FAILED unless the store entry, the chains and the hooks exist."""
        addresses = container_addresses(raw.get("prevResult"))
        with cni_errors("cannot read the metadata store"):
            entries, _ = self.store.read_all() if self.store.path.exists() else ({}, None)
        problems = [] if handle in entries else [f"container {handle} is not in the metadata store"]
        with cni_errors("cannot read the iptables filter table"):
            for version in self.settings.versions:
                ip = addresses.ipv4 if version == 4 else addresses.ipv6
                problems += missing(handle, ip, self.settings.underlay_interfaces, version,
                                    self.runners[version].save(), self.settings.chains)
        if problems:
            raise CniError(Code.CHECK_FAILED, f"container {handle} is not set up", "; ".join(problems))

    @property
    def _rate_limit_log(self) -> bool:
        """Whether containers have a rate-limit log chain (outbound connection limits logged)."""
        limit = self.settings.chains.conn_limit
        return limit is not None and limit.logging

    def _restore(self, version: int, lines: list[str]) -> None:
        self.runners[version].restore(transaction(lines))


def _refuse_collisions(handle: str, entries: Mapping[str, Any], rate_limit_log: bool) -> None:
    """Raise :class:`ChainNameCollision` when another container in ``entries`` shares a chain name with ``handle``."""
    for other in entries:
        if chains.collide(handle, other, rate_limit_log=rate_limit_log):
            raise ChainNameCollision(handle, other)


def _own_addresses(entry: Any, raw: Mapping[str, Any]) -> set[str]:
    """The container's addresses: from its removed store entry and from ``prevResult`` (either may be missing)."""
    ips = set()
    if isinstance(entry, Mapping):
        for key in ("ip", "ipv6"):
            try:
                ips.add(grammar.ip(entry.get(key)))
            except ValueError:
                continue
    try:
        addresses = container_addresses(raw.get("prevResult"))
    except CniError:
        addresses = None
    if addresses is not None:
        ips.update((addresses.ipv4, addresses.ipv6))
    return ips - {""}
