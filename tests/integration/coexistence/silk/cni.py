"""A stand-in for silk's cni-wrapper-plugin on a test cell (support.cell), read from silk-release's source.

In cf-deployment cni-wrapper-plugin stays the CNI beside our agent: it writes the container
metadata store and the ``netout--<h>`` chains, and with silk's agent at
``enable_asg_syncing: false`` (silk.agent: 405) it inserts Garden's static rules itself.
:class:`SilkCni` does what the plugin does, in its order, with the cell's real iptables tools
(``iptables-<backend>``) inside the cell namespace; IPv4 only, as silk.

ADD (cmdAdd), steps reported by name to ``on_step`` after each one, ``step_delay`` seconds apart:

``delegate``     the container's namespace and veth (silk-cni's job; here :meth:`Cell.add_container`)
``store``        ``store.Add`` (silk.store: silk's format and lock protocol)
``force-poll``   ``GET /force-policy-poll-cycle`` on the silk agent; anything but 200 fails the ADD
``chains``       NetOut.Initialize: for input, netout, overlay, ``--log`` [, ``--rl-log``] in turn
                 ``-N`` then one restore appending the parent's jumps (INPUT, FORWARD per underlay
                 interface, FORWARD), then one restore per chain appending its rules
``netin``        ``netin--<h>`` in nat and mangle with PREROUTING jumps, then the port mappings
``force-asgs``   ``GET /force-asgs-for-container?container=<h>``
``static-rules`` only on 405: one restore holding ``-I netout--<h> 1 <rule>`` for each rule, so they
                 end up reversed, above the REJECT
``masquerade``   nat ``POSTROUTING ... -j MASQUERADE``

DEL (cmdDel): ``store`` (store.Delete), ``delegate`` (the container's veth is deleted; its handle
cannot be added again, as a CF handle never is), ``netin``,
``chains`` (per chain: ``-D`` each jump, ClearChain = ``-N`` or else ``-F``, ``-X``), ``masquerade``,
``orphan-cleanup`` (``GET /force-orphaned-asgs-cleanup``; 200 or 405). DEL never touches ``asg-<h>``
and, like silk, only collects the errors of its cleanup steps (:attr:`DelResult.errors`).

Every iptables command takes ``flock`` on the cell's lock file for its own duration, as
LockedIPTables does: single commands pass ``--wait`` (go-iptables), restores are
``iptables-restore --noflush`` without ``-w`` (lib/rules Restorer). Each command is recorded in
:attr:`SilkCni.calls` and passed to ``on_call`` after the lock is released, so a test can look at
(or hold) the table between any two kernel commits. A failing ADD raises :class:`CniFailure`
naming its step, leaving behind what silk would (e.g. the store entry when the force poll fails).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silk.netrules import (
    DenyNetworks,
    FullChain,
    PortMapping,
    Rule,
    SilkCniConfig,
    deny_networks,
    input_rules,
    local_dns_servers,
    masquerade_rule,
    netin_chains,
    netin_rules,
    netout_chains,
    parse_net_out_rules,
    parse_port_mappings,
    prefix,
    static_rules,
)
from silk.store import SilkStore, StoreFailure, go_locked
from support.cell import Cell
from support.netns import ns_run

__all__ = ["ADD_STEPS", "DEL_STEPS", "AddResult", "Call", "CniFailure", "DelResult", "SilkCni"]

ADD_STEPS = ("delegate", "store", "force-poll", "chains", "netin", "force-asgs", "static-rules", "masquerade")
DEL_STEPS = ("store", "delegate", "netin", "chains", "masquerade", "orphan-cleanup")
HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # stricter than silk (non-empty): safe in argv and URLs
_DELEGATE = threading.Lock()  # Cell.add_container numbers containers: one at a time


@dataclass(frozen=True)
class Call:
    """One iptables command the stand-in ran: argv, restore payload ('' for a single command), result."""

    handle: str
    step: str
    argv: tuple[str, ...]
    payload: str
    returncode: int
    stderr: str


class CniFailure(Exception):
    """The error cni-wrapper-plugin would return; ``step`` is where it stopped."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class AddResult:
    handle: str
    ip: str
    asg_status: int  # what /force-asgs-for-container answered
    static_rules: list[Rule]  # in BulkInsert's order (each went to position 1); empty unless 405
    warnings: list[str]  # what the rule converter printed to stderr


@dataclass
class DelResult:
    handle: str
    ip: str  # from the store entry ('' when there was none: silk then cannot remove its hooks)
    errors: list[str] = field(default_factory=list)  # printed by silk, not returned


@dataclass
class _Run:
    """One ADD or DEL: its hooks and the step it is in."""

    handle: str
    on_step: Callable[[str], None] | None
    on_call: Callable[[Call], None] | None
    delay: float
    step: str = ""

    def enter(self, step: str) -> None:
        if self.step and self.delay > 0:
            time.sleep(self.delay)
        self.step = step

    def done(self) -> None:
        if self.on_step is not None:
            self.on_step(self.step)


class SilkCni:
    """cni-wrapper-plugin for ``cell`` with ``config`` (a conflist); :meth:`add` and :meth:`delete`."""

    def __init__(self, cell: Cell, config: SilkCniConfig, *, step_delay: float = 0.0,
                 http_timeout: float = 30.0) -> None:
        self.cell = cell
        self.config = config
        self.store = SilkStore(config.datastore)
        self.step_delay = step_delay
        self.http_timeout = http_timeout
        self.calls: list[Call] = []
        self._deleted: set[str] = set()

    # -- ADD -------------------------------------------------------------------------------

    def add(self, handle: str, *, metadata: Mapping[str, Any] | None = None, net_out_rules: Any = None,
            port_mappings: Any = None, on_step: Callable[[str], None] | None = None,
            on_call: Callable[[Call], None] | None = None, step_delay: float | None = None) -> AddResult:
        """CNI ADD for ``handle``: ``metadata`` is Garden's, the rest its ``runtimeConfig`` (Garden's JSON shapes)."""
        run = _Run(handle, on_step, on_call, self.step_delay if step_delay is None else step_delay)
        try:
            rules, mappings = parse_net_out_rules(net_out_rules), parse_port_mappings(port_mappings)
        except ValueError as exc:
            raise CniFailure("config", f"loading wrapper config: {exc}") from None
        self._check_handle(handle)
        self._touch_lock_file()
        workload = (metadata or {}).get("container_workload")
        workload = workload if isinstance(workload, str) else ""
        ip = self._step(run, "delegate", lambda: self._delegate_add(handle))
        self._step(run, "store", lambda: self._store_add(run, ip, metadata))
        self._step(run, "force-poll", lambda: self._force_poll(run))
        denied = self._step(run, "chains", lambda: self._init_netout(run, ip))
        self._step(run, "netin", lambda: self._init_netin(run, ip, mappings))
        status, body = self._step(run, "force-asgs", lambda: self._agent_get(
            run, f"/force-asgs-for-container?container={handle}"))
        inserted: list[Rule] = []
        warnings: list[str] = []
        if status == 405:
            inserted, warnings = static_rules(handle, workload, rules, self.config, denied)
            self._step(run, "static-rules", lambda: self._bulk_insert(run, inserted))
        if status not in (200, 405):
            raise CniFailure("force-asgs", f"asg sync returned {status} with message: {body}")
        self._step(run, "masquerade", lambda: self._checked(
            "error setting up default ip masq rule", self._restore(run, "nat", "-A POSTROUTING",
                                                                   [masquerade_rule(ip, self.config)])))
        return AddResult(handle, ip, status, inserted, warnings)

    def _step(self, run: _Run, name: str, action: Callable[[], Any]) -> Any:
        run.enter(name)
        result = action()
        run.done()
        return result

    def _check_handle(self, handle: str) -> None:
        if not HANDLE.fullmatch(handle):
            raise CniFailure("config", f"invalid Container ID {handle[:60]!r}: the stand-in accepts "
                                       f"{HANDLE.pattern}")

    def _touch_lock_file(self) -> None:
        """newPluginController's ensureIptablesFileOwnership: os.WriteFile(lock, empty, 0600)."""
        try:
            fd = os.open(self.config.iptables_lock_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CniFailure("config", f"open {self.config.iptables_lock_file}: {exc.strerror}") from None
        os.close(fd)

    def _delegate_add(self, handle: str) -> str:
        if handle in self._deleted:
            raise CniFailure("delegate", f"delegate call: {handle}: its veth was deleted; use a new handle")
        with _DELEGATE:
            container = self.cell.containers.get(handle) or self.cell.add_container(handle)
        return container.ip

    def _store_add(self, run: _Run, ip: str, metadata: Mapping[str, Any] | None) -> None:
        try:
            self.store.add(run.handle, ip, metadata)
        except StoreFailure as exc:
            self._single(run, "nat", "-D", "POSTROUTING", *masquerade_rule(ip, self.config))  # "cleaning up from error"
            raise CniFailure("store", f"store add: {exc}") from None

    def _force_poll(self, run: _Run) -> None:
        status, body = self._agent_get(run, "/force-policy-poll-cycle")
        if status != 200:
            raise CniFailure("force-poll", f"vpa response code: {status} with message: {body}")

    def _init_netout(self, run: _Run, ip: str) -> DenyNetworks:
        """getLocalDNSServers, then NetOut.Initialize (Validate, input rules, initChains, applyRules)."""
        try:
            dns = local_dns_servers(self.config)
            denied = deny_networks(self.config)
            chains = netout_chains(run.handle, ip, self.config, input_rules(self.config, dns))
        except ValueError as exc:
            raise CniFailure("chains", f"initialize net out: {exc}") from None
        self._init_chains(run, chains, "initialize net out")
        for chain in chains:
            self._checked("initialize net out: appending rule",
                          self._restore(run, chain.table, f"-A {chain.name}", chain.rules))
        return denied

    def _init_chains(self, run: _Run, chains: Sequence[FullChain], context: str) -> None:
        for chain in chains:
            self._checked(f"{context}: creating chain", self._single(run, chain.table, "-N", chain.name))
            if chain.parent:
                self._checked(f"{context}: appending rule to chain",
                              self._restore(run, chain.table, f"-A {chain.parent}", chain.jumps))

    def _init_netin(self, run: _Run, ip: str, mappings: Sequence[PortMapping]) -> None:
        self._init_chains(run, netin_chains(run.handle), "initializing net in")
        for mapping in mappings:
            if mapping.host_port <= 0:
                raise CniFailure("netin", f"cannot allocate port {mapping.host_port}")
            try:
                ipaddress.ip_address(self.config.instance_address)
            except ValueError:
                raise CniFailure("netin", f"adding netin rule: invalid ip: {self.config.instance_address}") from None
            for table, rules in netin_rules(mapping, ip, self.config):
                name = prefix("netin", run.handle)
                self._checked("adding netin rule: appending rule", self._restore(run, table, f"-A {name}", rules))

    def _bulk_insert(self, run: _Run, rules: Sequence[Rule]) -> None:
        self._checked("bulk insert: bulk inserting net-out rules",
                      self._restore(run, "filter", f"-I {prefix('netout', run.handle)} 1", rules))

    # -- DEL -------------------------------------------------------------------------------

    def delete(self, handle: str, *, on_step: Callable[[str], None] | None = None,
               on_call: Callable[[Call], None] | None = None, step_delay: float | None = None) -> DelResult:
        """CNI DEL for ``handle``: every step runs; cleanup errors are collected, not raised."""
        run = _Run(handle, on_step, on_call, self.step_delay if step_delay is None else step_delay)
        self._check_handle(handle)
        result = DelResult(handle, "")
        run.enter("store")
        try:
            result.ip = str(self.store.delete(handle)["ip"])
        except StoreFailure as exc:
            result.errors.append(f"store delete: {exc}")
        run.done()
        self._touch_lock_file()
        self._step(run, "delegate", lambda: self._delegate_del(handle, result))
        self._step(run, "netin", lambda: self._cleanup(run, netin_chains(handle), "net in cleanup", result))
        self._step(run, "chains", lambda: self._cleanup(run, netout_chains(handle, result.ip, self.config),
                                                        "net out cleanup", result))
        self._step(run, "masquerade", lambda: self._collect(
            result, "removing IP masq", self._single(run, "nat", "-D", "POSTROUTING",
                                                     *masquerade_rule(result.ip, self.config))))
        self._step(run, "orphan-cleanup", lambda: self._orphan_cleanup(run))
        return result

    def _delegate_del(self, handle: str, result: DelResult) -> None:
        container = self.cell.containers.get(handle)
        if container is None or handle in self._deleted:
            return
        self._deleted.add(handle)
        out = ns_run(container.ns, ["ip", "link", "del", "eth0"], check=False)
        if out.returncode:
            result.errors.append(f"delegate delete: {out.stderr.strip()}")

    def _cleanup(self, run: _Run, chains: Sequence[FullChain], context: str, result: DelResult) -> None:
        """cleanupChain for each chain: delete the jumps, ClearChain, DeleteChain; errors only collected."""
        for chain in chains:
            if chain.parent:
                for jump in chain.jumps:
                    self._collect(result, f"{context}: delete rule",
                                  self._single(run, chain.table, "-D", chain.parent, *jump))
            self._collect(result, f"{context}: clear chain", self._clear_chain(run, chain))
            self._collect(result, f"{context}: delete chain", self._single(run, chain.table, "-X", chain.name))

    def _clear_chain(self, run: _Run, chain: FullChain) -> Call:
        """go-iptables ClearChain under one lock: ``-N``; if it exists (exit 1), ``-F``."""
        with go_locked(Path(self.config.iptables_lock_file)):
            calls = [self._exec(run, self._single_argv(chain.table, "-N", chain.name), "")]
            if calls[0].returncode == 1:
                calls.append(self._exec(run, self._single_argv(chain.table, "-F", chain.name), ""))
        return self._notify(run, *calls)

    def _orphan_cleanup(self, run: _Run) -> None:
        status, body = self._agent_get(run, f"/force-orphaned-asgs-cleanup?container={run.handle}")
        if status not in (200, 405):
            raise CniFailure("orphan-cleanup", f"asg cleanup returned {status} with message: {body}")

    # -- iptables and HTTP -----------------------------------------------------------------

    def _single_argv(self, table: str, *args: str) -> tuple[str, ...]:
        return (self.cell.tool(4), "-t", table, *args, "--wait")

    def _single(self, run: _Run, table: str, *args: str) -> Call:
        with go_locked(Path(self.config.iptables_lock_file)):
            call = self._exec(run, self._single_argv(table, *args), "")
        return self._notify(run, call)

    def _restore(self, run: _Run, table: str, command: str, rules: Sequence[Rule]) -> Call:
        """LockedIPTables.bulkAction: ``*table``, ``<command> <rule>`` per rule, ``COMMIT``."""
        payload = "".join([f"*{table}\n", *(f"{command} {' '.join(rule)}\n" for rule in rules), "COMMIT\n"])
        with go_locked(Path(self.config.iptables_lock_file)):
            call = self._exec(run, (self.cell.tool(4, "restore"), "--noflush"), payload)
        return self._notify(run, call)

    def _exec(self, run: _Run, argv: tuple[str, ...], payload: str) -> Call:
        out = ns_run(self.cell.ns, argv, input=payload or None, check=False)
        call = Call(run.handle, run.step, argv, payload, out.returncode, out.stderr.strip())
        self.calls.append(call)
        return call

    @staticmethod
    def _notify(run: _Run, *calls: Call) -> Call:
        """Report commands to ``on_call`` once the lock is released; return the last."""
        for call in calls:
            if run.on_call is not None:
                run.on_call(call)
        return calls[-1]

    @staticmethod
    def _checked(context: str, call: Call) -> None:
        if call.returncode:
            raise CniFailure(call.step, f"{context}: iptables call: running {' '.join(call.argv)}: "
                                        f"exit status {call.returncode}: {call.stderr}")

    @staticmethod
    def _collect(result: DelResult, context: str, call: Call) -> None:
        if call.returncode:
            result.errors.append(f"{context}: {' '.join(call.argv)}: exit status {call.returncode}: {call.stderr}")

    def _agent_get(self, run: _Run, path: str) -> tuple[int, str]:
        """http.DefaultClient.Get on ``policy_agent_force_poll_address`` (with a timeout here)."""
        host, _, port = self.config.policy_agent_force_poll_address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=self.http_timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read(4096).decode("utf-8", errors="replace")
        except OSError as exc:
            raise CniFailure(run.step, f'Get "http://{host}:{port}{path}": {exc}') from None
        finally:
            conn.close()
