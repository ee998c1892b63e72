"""Serving Prometheus metrics on 127.0.0.1, for single- and multi-process daemons.

* :func:`serve_metrics` starts prometheus-client's HTTP exporter for a registry on a
  loopback port (never a public address; 0 means "do not serve").
* Multi-process daemons (the policy server's uvicorn workers) use prometheus-client's
  multiprocess mode: :func:`prepare_multiprocess_dir` creates a private directory and sets
  ``PROMETHEUS_MULTIPROC_DIR`` *before* any worker starts (workers inherit it and write
  their samples there); the parent serves :func:`multiprocess_registry`, which merges them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from dynamic_asgs.errors import ConfigError

__all__ = [
    "MetricsServer",
    "multiprocess_registry",
    "prepare_multiprocess_dir",
    "remove_multiprocess_dir",
    "serve_metrics",
]

_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PID = re.compile(r"_(\d+)\.db$")


@dataclass
class MetricsServer:
    """A running exporter; :meth:`stop` shuts it down."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(port: int, registry: CollectorRegistry, *, host: str = "127.0.0.1") -> MetricsServer | None:
    """Serve ``registry`` at ``http://host:port/metrics``; ``None`` when ``port`` is 0."""
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"metrics port {host}:{port}: cannot listen: {exc.strerror or exc}") from exc
    return MetricsServer(server, thread)


def prepare_multiprocess_dir() -> str:
    """Create an empty directory for multiprocess samples and export it to child processes."""
    path = tempfile.mkdtemp(prefix="dynamic-asgs-metrics-")
    os.environ[_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    """Delete the samples directory made by :func:`prepare_multiprocess_dir`."""
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(_ENV) == path:
        del os.environ[_ENV]


class _LiveCollector:
    """MultiProcessCollector that first retires the files of processes that have exited.

    uvicorn restarts a dead worker but cannot call ``mark_process_dead``; without this a
    crashed worker's "live" gauges (e.g. held requests) would be counted forever.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._inner = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        for pid in {int(m.group(1)) for name in os.listdir(self.path) if (m := _PID.search(name))}:
            if not Path(f"/proc/{pid}").exists():
                mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        return self._inner.collect()  # type: ignore[no-untyped-call,no-any-return]


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that merges the samples every live (and every exited, for counters) process wrote."""
    registry = CollectorRegistry()
    registry.register(_LiveCollector(path))
    return registry

