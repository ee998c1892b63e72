"""``dynamic-asgs vxlan-policy-agent --config-file F``: the cell daemon (composition root).

The loop runs a full cycle at start, then whenever the poll interval elapses, the
container store changes (a new or removed container), a blocking query reports an
ASG change, or an operator forces one. Between cycles it runs settle passes when a
new container waits for its CNI or a written one is watched (:mod:`.dataplane.settle`),
and every ``kernel_verify_interval_seconds`` (at least twenty times what a whole-table
read last cost, so verifying never takes more than about 5% of a core) the next cycle
reads the whole table, which finds and repairs drift. The CNI's force calls run in
the force server's threads, serialised with cycles by the converger's lock (the agent's
one lock; ``/asg-status`` reads the converger's last snapshot without it). With
``enable_asg_syncing: false`` the agent touches no iptables at all and the force
endpoints answer 405 (the CNI then installs static rules). SIGTERM/SIGINT stop it.

Beside the loop, two threads of their own (issue 14): the denied-egress watcher reads
every ASG chain's final REJECT counter each ``denied_egress_check_interval_seconds``, and,
when the cell has a ``cell_id``, the reporter sends the cell's report to the policy server
after each status change and at least every ``report_interval_seconds``.

Nothing a peer sends ends the process: a cycle that fails unexpectedly is logged
(``cycle-crashed``, with the traceback), counted, and the loop goes on.
"""

from __future__ import annotations

import argparse
import functools
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from dynamic_asgs.agent.converger import Converger
from dynamic_asgs.agent.dataplane import Dataplane
from dynamic_asgs.agent.dataplane.settle import SettleSettings
from dynamic_asgs.agent.denials import DenialTracker, DenialWatcher
from dynamic_asgs.agent.endpoints import LocalServer, debug_server, force_server
from dynamic_asgs.agent.metrics import AgentMetrics
from dynamic_asgs.agent.policy_client import PolicyClient
from dynamic_asgs.agent.reporter import FleetReporter
from dynamic_asgs.agent.results import CycleKind
from dynamic_asgs.agent.settings import AgentSettings, load_settings
from dynamic_asgs.agent.status import DisabledStatus
from dynamic_asgs.agent.watcher import PolicyWatcher
from dynamic_asgs.iptables.runner import IptablesRunner
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import MetadataStore, StoreView
from dynamic_asgs.metrics import serve_metrics
from dynamic_asgs.signals import stop_on_signals

__all__ = ["add_arguments", "run"]

#: A whole-table read (verification) costs at most this share of the time between two.
_VERIFY_SHARE = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True, help="path to vxlan-policy-agent.json")


def _client(s: AgentSettings) -> PolicyClient:
    return PolicyClient(s.policy_server_url, ca_file=s.ca_cert_file, cert_file=s.client_cert_file,
                        key_file=s.client_key_file, timeout=s.client_timeout)


def _disabled(s: AgentSettings, log: Logger, stop: threading.Event) -> int:
    log.info("asg-syncing-disabled", {"effect": "no iptables changes; force endpoints answer 405"})
    servers = [
        force_server(host=s.force_host, port=s.force_port, enabled=False, sync_container=lambda h: None,
                     cleanup_container=lambda h: None, logger=log).start(),
        debug_server(host=s.debug_host, port=s.debug_port, logger=log,
                     status=DisabledStatus).start(),
    ]
    stop.wait()
    for server in servers:
        server.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT; exit 2 on invalid configuration."""
    s = load_settings(args.config_file)
    log = Logger(s.source, level=s.log_level)
    stop = threading.Event()
    stop_on_signals(stop)
    metrics = AgentMetrics()
    exporter = serve_metrics(s.metrics_port, metrics.registry)
    log.info("starting", {"policy_server_url": s.policy_server_url, "asg_poll_interval": s.poll_interval,
                          "enable_asg_syncing": s.enable_asg_syncing, "blocking_wait": s.blocking_wait,
                          "ipv6": s.enable_ipv6, "datastore": str(s.store_path)})
    try:
        if not s.enable_asg_syncing:
            return _disabled(s, log, stop)
        return _serve(s, log, stop, metrics)
    finally:
        if exporter is not None:
            exporter.stop()
        log.info("stopped")


def _serve(s: AgentSettings, log: Logger, stop: threading.Event, metrics: AgentMetrics) -> int:
    versions = (4, 6) if s.enable_ipv6 else (4,)
    runners = {v: IptablesRunner(version=v, restore_cmd=s.commands[v][0], save_cmd=s.commands[v][1],
                                 lock_file=s.lock_file, lock_timeout=s.lock_timeout) for v in versions}
    emitter = None
    if s.loggregator is not None:
        from dynamic_asgs.agent.loggregator import AppLogEmitter

        lg = s.loggregator
        emitter = AppLogEmitter(address=lg.address, ca_file=lg.ca_file, cert_file=lg.cert_file,
                                key_file=lg.key_file, logger=log)
    client, watch_client = _client(s), _client(s)
    settle = SettleSettings(settle_seconds=s.settle_seconds, watch_seconds=s.watch_seconds,
                            recheck=s.store_check_interval, max_recheck=s.poll_interval)
    dataplane = Dataplane(runners=runners, logger=log, settle=settle, fingerprint_file=s.fingerprint_file)
    denials = None
    if s.denied_check_interval > 0:
        denials = DenialWatcher(readers=runners, containers=lambda: converger.containers(), logger=log,
                                metrics=metrics, interval=s.denied_check_interval, app_log=emitter,
                                tracker=DenialTracker(window=s.denied_window))
    report_client = _client(s) if s.cell_id else None
    reporter = None
    if report_client is not None:
        reporter = FleetReporter(sink=report_client, status=lambda: converger.status(), cell_id=s.cell_id,
                                 cell_name=s.cell_name, interval=s.report_interval, logger=log, metrics=metrics)
    converger = Converger(view=StoreView(MetadataStore(s.store_path), log), policy=client, dataplane=dataplane,
                          settings=s.chains, logger=log, metrics=metrics, emitter=emitter, denials=denials,
                          on_publish=reporter.wake if reporter is not None else None)
    background = [t.start() for t in (denials, reporter) if t is not None]
    wake = threading.Event()
    servers: list[LocalServer] = [
        force_server(host=s.force_host, port=s.force_port, enabled=True, sync_container=converger.sync_container,
                     cleanup_container=converger.cleanup_container, logger=log).start(),
        debug_server(host=s.debug_host, port=s.debug_port, logger=log, status=converger.status).start(),
    ]
    watcher = None
    if s.blocking_wait > 0:
        watcher = PolicyWatcher(policy=watch_client, converger=converger, wait=s.blocking_wait,
                                on_change=wake.set, logger=log).start()
    try:
        _loop(s, converger, stop, wake, log, metrics)
    finally:
        if watcher is not None:
            watcher.stop(timeout=0.5)  # a held blocking query ends with the process (daemon thread)
        for thread in background:
            thread.stop(timeout=2.0)
        if report_client is not None:
            report_client.close()
        for server in servers:
            server.stop()
        if emitter is not None:
            emitter.close()
        client.close()
        watch_client.close()
    return 0


def _guarded(step: Callable[[], Any], kind: str, log: Logger, metrics: AgentMetrics) -> None:
    """Run one step of the loop; an unexpected failure is logged and counted, never fatal."""
    try:
        step()
    except Exception as exc:  # the daemon outlives any input (issue 13): log, count, go on
        log.error("cycle-crashed", exc, {"kind": kind, "effect": "current rules kept; retried next cycle",
                                         "traceback": traceback.format_exc(limit=20)[-4000:]})
        metrics.observe_crash(kind)


def _next_verify(s: AgentSettings, converger: Converger, verified_at: float) -> float:
    """When the next whole-table read is due (monotonic).

    Every ``verify_interval``; sooner after a write (its fingerprints are learned by the
    next read, so the window in which an edit could be learned as ours stays short), but
    never more often than a read every twenty times what one costs.
    """
    gap = _VERIFY_SHARE * converger.last_read_seconds
    due = verified_at + max(s.verify_interval, gap)
    if converger.last_write > verified_at:
        due = min(due, max(converger.last_write, verified_at + gap) + s.store_check_interval)
    return due


def _loop(s: AgentSettings, converger: Converger, stop: threading.Event, wake: threading.Event, log: Logger,
          metrics: AgentMetrics) -> None:
    verified_at, kind = -math.inf, CycleKind.FULL
    while not stop.is_set():
        if time.monotonic() >= _next_verify(s, converger, verified_at):
            verified_at = time.monotonic()  # before the cycle: what it writes is learned by the next read
            converger.invalidate_kernel()  # this cycle reads the whole table: drift is found and repaired
        _guarded(functools.partial(converger.cycle, kind), kind, log, metrics)
        next_poll = time.monotonic() + s.poll_interval
        while not stop.is_set():
            if wake.is_set():
                wake.clear()
                kind = CycleKind.POLICY_CHANGE
                break
            now = time.monotonic()
            next_verify = _next_verify(s, converger, verified_at)
            if now >= next_poll or now >= next_verify:
                kind = CycleKind.FULL
                break
            if converger.store_changed():
                kind = CycleKind.STORE_CHANGE
                break
            look = converger.next_look()
            if look is not None and look <= time.time():
                _guarded(converger.settle, "settle", log, metrics)
                if (after := converger.next_look()) is not None and after <= time.time():
                    stop.wait(min(1.0, s.store_check_interval))  # no progress: never spin
                continue
            until_look = max(0.0, look - time.time()) if look is not None else s.store_check_interval
            stop.wait(min(s.store_check_interval, until_look, max(0.0, min(next_poll, next_verify) - now)))
