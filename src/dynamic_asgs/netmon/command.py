"""``dynamic-asgs netmon --config-file F``: cell metrics every ``poll_interval`` seconds.

The composition of netmon: one :class:`~dynamic_asgs.iptables.runner.IptablesRunner` per
family (only its save command is used; it takes the iptables lock like every writer), the
metrics of :mod:`.measure` served on 127.0.0.1:``metrics_port``, and a loop that measures at
start and then every ``poll_interval`` until SIGTERM or SIGINT. An invalid configuration
exits 2 with a message naming the key.
"""

from __future__ import annotations

import argparse
import threading

from dynamic_asgs.config import load_config, load_schema
from dynamic_asgs.iptables.runner import IptablesRunner
from dynamic_asgs.lager import Logger
from dynamic_asgs.metrics import serve_metrics
from dynamic_asgs.netmon.measure import Measurements, NetmonMetrics, RuleCounter
from dynamic_asgs.signals import stop_on_signals

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """netmon's flags: only the configuration file (silk's netmon takes the same)."""
    parser.add_argument("--config-file", required=True, help="path to netmon.json")


def run(args: argparse.Namespace) -> int:
    """Measure at start and every poll interval until SIGTERM/SIGINT; exit 2 on invalid configuration."""
    conf = load_config(args.config_file, load_schema("dynamic_asgs.netmon", "config_schema.json"))
    prefix = conf["log_prefix"]
    log = Logger(f"{prefix}.netmon" if prefix else "netmon", level=conf["log_level"])
    stop = threading.Event()
    stop_on_signals(stop)
    saves = {4: conf["iptables_save_command"], 6: conf["ip6tables_save_command"]}
    counters: list[RuleCounter] = [
        IptablesRunner(version=v, restore_cmd="", save_cmd=saves[v], lock_file=conf["iptables_lock_file"],
                       lock_timeout=conf["iptables_lock_timeout_seconds"])
        for v in ((4, 6) if conf["enable_ipv6"] else (4,))
    ]
    metrics = NetmonMetrics()
    exporter = serve_metrics(conf["metrics_port"], metrics.registry)
    measurements = Measurements(counters=counters, interface=conf["interface_name"], metrics=metrics, logger=log)
    log.info("starting", {"poll_interval": conf["poll_interval"], "interface_name": conf["interface_name"]})
    try:
        while not stop.is_set():
            log.debug("poll-complete", measurements.poll())
            stop.wait(conf["poll_interval"])
    finally:
        if exporter is not None:
            exporter.stop()
        log.info("stopped")
    return 0
