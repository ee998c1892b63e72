"""The policy server's merged worker metrics: counters survive a worker, live gauges do not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from dynamic_asgs.metrics import multiprocess_registry, serve_metrics
from support.daemons import free_port

WORKER = """
from prometheus_client import Counter, Gauge
Counter("internal_security_groups_requests", "r").inc(3)
Gauge("internal_security_groups_waiting_requests", "w", multiprocess_mode="livesum").set(5)
"""


def test_an_exited_workers_live_gauges_are_dropped_and_its_counters_kept(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", WORKER], env=env, check=True, timeout=60)  # a worker that has exited
    exporter = serve_metrics(free_port(), multiprocess_registry(str(tmp_path)))
    assert exporter is not None
    try:
        text = requests.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5).text
    finally:
        exporter.stop()
    assert "internal_security_groups_requests_total 3.0" in text
    assert "internal_security_groups_waiting_requests 5.0" not in text

