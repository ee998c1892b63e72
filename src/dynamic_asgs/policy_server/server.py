"""``dynamic-asgs policy-server``: uvicorn workers serving the internal API over mutual TLS.

The main process validates the configuration (exit 2 on any problem, certificate files
included), migrates the schema (``--migrate-only`` does only that, for a BOSH pre-start;
otherwise a failed migration is retried in the background while workers answer 503),
raises the open-file limit (thousands of agents hold connections in blocking queries),
serves the health endpoint and the merged Prometheus metrics on 127.0.0.1 (with the fleet
metrics of :class:`~dynamic_asgs.policy_server.fleet.FleetEvaluator`, which runs here), and runs
``workers`` uvicorn processes (event loop per process; TLS 1.2+, client certificate
required and verified against ``ca_cert_file``) on ``listen_host:internal_listen_port``.
uvicorn's supervisor restarts a worker that dies; SIGTERM/SIGINT stop everything.

Workers speak HTTP through :class:`~dynamic_asgs.policy_server.guard.GuardedHttpToolsProtocol`
(bounded request heads), without proxy headers (a client's address is its TCP peer: the
per-client bound on blocking queries must not be spoofable) and without WebSockets.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from dynamic_asgs.errors import ConfigError, DatabaseError
from dynamic_asgs.lager import Logger
from dynamic_asgs.metrics import multiprocess_registry, prepare_multiprocess_dir, remove_multiprocess_dir, serve_metrics
from dynamic_asgs.policy_server.api import CONFIG_ENV, bridge_logging
from dynamic_asgs.policy_server.fleet import FleetCollector, FleetEvaluator
from dynamic_asgs.policy_server.guard import GuardedHttpToolsProtocol
from dynamic_asgs.policy_server.health import HealthServer
from dynamic_asgs.policy_server.settings import ServerSettings, load_settings
from dynamic_asgs.policydb.db import create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.reports import ReportStore
from dynamic_asgs.policydb.store import PolicyStore
from dynamic_asgs.tls import server_context

__all__ = ["raise_open_files_limit", "run"]

_OPEN_FILES = 65536
_BACKLOG = 4096


def raise_open_files_limit(wanted: int = _OPEN_FILES) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (the hard limit too when permitted); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ssl_context_factory(config: uvicorn.Config, _default: Any) -> ssl.SSLContext:
    """uvicorn's TLS context in each worker: :func:`dynamic_asgs.tls.server_context` (mTLS, TLS 1.2+)."""
    assert config.ssl_ca_certs and config.ssl_certfile and config.ssl_keyfile
    return server_context(ca_file=str(config.ssl_ca_certs), cert_file=str(config.ssl_certfile),
                          key_file=str(config.ssl_keyfile), what="policy server")


def _listen(settings: ServerSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.listen_host, settings.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{settings.source}: cannot listen on {settings.listen_host}:{settings.port}: "
                          f"{exc.strerror or exc}") from exc
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _migrate_in_background(engine: Any, logger: Logger, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            try:
                before, after = upgrade(engine, logger=logger)
            except DatabaseError as exc:
                logger.error("schema-migration-failed", exc, {"note": "retrying in 5 s; workers answer 503"})
                stop.wait(5)
                continue
            if before != after:
                logger.info("schema-migrated", {"from": before, "to": after})
            return

    thread = threading.Thread(target=loop, name="migrate", daemon=True)
    thread.start()
    return thread


def _uvicorn_config(settings: ServerSettings) -> uvicorn.Config:
    return uvicorn.Config(
        "dynamic_asgs.policy_server.api:create_app", factory=True, host=settings.listen_host, port=settings.port,
        workers=settings.workers, ssl_certfile=settings.server_cert_file, ssl_keyfile=settings.server_key_file,
        ssl_ca_certs=settings.ca_cert_file, ssl_cert_reqs=ssl.CERT_REQUIRED, ssl_context_factory=ssl_context_factory,
        log_config=None, access_log=False, backlog=_BACKLOG, timeout_keep_alive=90, timeout_graceful_shutdown=3,
        server_header=False, lifespan="on", loop="uvloop", http=GuardedHttpToolsProtocol, ws="none",
        proxy_headers=False,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (0); 2 on invalid configuration; 1 if ``--migrate-only`` fails."""
    settings = load_settings(args.config_file)
    logger = Logger(f"{settings.log_prefix}.policy-server", level=settings.log_level)
    server_context(ca_file=settings.ca_cert_file, cert_file=settings.server_cert_file,
                   key_file=settings.server_key_file, what=f"{settings.source}: TLS")
    engine = create_engine(settings.database, pool_size=2, max_overflow=1)
    if args.migrate_only:
        try:
            before, after = upgrade(engine, logger=logger.session("migrate"))
        except DatabaseError as exc:
            logger.error("schema-migration-failed", exc)
            return 1
        logger.info("schema-migrated", {"from": before, "to": after})
        return 0
    sock = _listen(settings)
    stop = threading.Event()
    _migrate_in_background(engine, logger.session("migrate"), stop)
    store = PolicyStore(engine)
    health = HealthServer(settings.health_port, store.version, logger.session("health"))
    samples = prepare_multiprocess_dir()
    registry = multiprocess_registry(samples)
    collector = FleetCollector()
    registry.register(collector)
    evaluator = FleetEvaluator(ReportStore(engine), collector, silent_after_intervals=settings.silent_after_intervals,
                               forget_after=settings.forget_silent_cells_after, logger=logger.session("fleet"))
    exporter = serve_metrics(settings.metrics_port, registry)
    os.environ[CONFIG_ENV] = str(Path(settings.source).resolve())
    limit = raise_open_files_limit()
    bridge_logging(logger.session("uvicorn"))
    health.start()
    evaluator.start()
    logger.info("started", {"listen": f"{settings.listen_host}:{settings.port}", "workers": settings.workers,
                            "health_check_port": health.port, "open_files_limit": limit})
    try:
        Multiprocess(_uvicorn_config(settings), sockets=[sock]).run()
    finally:
        stop.set()
        evaluator.stop()
        health.stop()
        if exporter is not None:
            exporter.stop()
        sock.close()
        engine.dispose()
        remove_multiprocess_dir(samples)
        logger.info("exited")
    return 0

