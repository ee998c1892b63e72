"""``dynamic-asgs policy-server-asg-syncer``: the composition root and entry point.

:func:`build` wires settings -> TLS, HTTP clients, store, lease, loops; :func:`run` runs
them until a signal.

Everything that can be wrong in the configuration (unknown keys, unreadable certificate
files) fails here, before the daemon starts, as a ConfigError (exit 2). Everything that
can be down (CC, UAA, the DB) is only contacted later, with retries. Every TLS context
for CC and UAA honours the listing deadline down to the socket
(:func:`dynamic_asgs.http.deadline.enforce`).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from dataclasses import dataclass

from dynamic_asgs.cc.client import CloudController, Limits
from dynamic_asgs.cc.uaa import TokenSource
from dynamic_asgs.http import deadline
from dynamic_asgs.http.client import JsonHttp, RetryPolicy, Timeouts
from dynamic_asgs.lager import Logger
from dynamic_asgs.metrics import serve_metrics
from dynamic_asgs.policydb.db import create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import PolicyStore
from dynamic_asgs.signals import stop_on_signals
from dynamic_asgs.syncer.daemon import LeaseKeeper, SyncLoop
from dynamic_asgs.syncer.lease import Lease
from dynamic_asgs.syncer.metrics import SyncerMetrics
from dynamic_asgs.syncer.settings import SyncerSettings, load_settings
from dynamic_asgs.syncer.sync import Syncer
from dynamic_asgs.tls import client_context, session_for

__all__ = ["Parts", "build", "build_cc", "run"]


@dataclass
class Parts:
    """The wired daemon; :meth:`close` releases what :func:`build` opened."""

    logger: Logger
    metrics: SyncerMetrics
    keeper: LeaseKeeper
    loop: SyncLoop
    stop: threading.Event
    wake: threading.Event
    close: Callable[[], None]


def build_cc(settings: SyncerSettings, metrics: SyncerMetrics) -> CloudController:
    """The Cloud Controller client (UAA, public API, internal mTLS API) for ``settings``."""
    skip = settings.skip_ssl_validation
    timeouts = Timeouts(connect=settings.connect_timeout, read=settings.request_timeout)
    retry = RetryPolicy(attempts=4, deadline=min(60.0, settings.retry_deadline))
    observe = metrics.observe_request

    def http(url: str, service: str, ca: str, cert: str = "", key: str = "") -> JsonHttp:
        context = client_context(ca_file=ca or None, cert_file=cert or None, key_file=key or None,
                                 skip_verify=skip, what=service)
        return JsonHttp(url, session_for(deadline.enforce(context)), service=service, timeouts=timeouts, retry=retry,
                        observe=observe)

    tokens = TokenSource(http(settings.uaa_url, "uaa", settings.uaa_ca),
                         client_id=settings.uaa_client, client_secret=settings.uaa_client_secret)
    api = http(settings.cc_url, "cloud controller", settings.cc_ca_cert)
    internal = http(settings.cc_internal_url, "cloud controller internal", settings.cc_internal_ca_cert,
                    settings.cc_internal_client_cert, settings.cc_internal_client_key)
    limits = Limits(max_pages=settings.max_pages, max_response_bytes=settings.max_response_bytes,
                    deadline=settings.listing_deadline)
    return CloudController(api=api, internal=internal, tokens=tokens, page_size=settings.page_size,
                           restarts=settings.listing_attempts, limits=limits)


def build(config_file: str) -> Parts:
    """Load ``config_file`` and wire the daemon (no network or DB access yet)."""
    settings = load_settings(config_file)
    logger = Logger(f"{settings.log_prefix}.policy-server-asg-syncer", level=settings.log_level)
    if settings.skip_ssl_validation:
        logger.info("skip-ssl-validation", {"note": "UAA and CC certificates are not verified"})
    metrics = SyncerMetrics()
    cc = build_cc(settings, metrics)
    engine = create_engine(settings.database, pool_size=2, max_overflow=2)
    store = PolicyStore(engine)
    lease = Lease(engine, holder=settings.holder, ttl=settings.lease_ttl)
    stop, wake = threading.Event(), threading.Event()

    def migrate() -> None:
        before, after = upgrade(engine)
        if before != after:
            logger.info("schema-migrated", {"from": before, "to": after})

    keeper = LeaseKeeper(lease, logger=logger.session("lease"), metrics=metrics, wake=wake, prepare=migrate)
    syncer = Syncer(cc=cc, store=store, fence=lease.fence, logger=logger.session("sync"), metrics=metrics)
    loop = SyncLoop(syncer, keeper, interval=settings.poll_interval, retry_deadline=settings.retry_deadline,
                    logger=logger.session("sync"), metrics=metrics, stop=stop, wake=wake)
    exporter = serve_metrics(settings.metrics_port, metrics.registry)

    def close() -> None:
        if exporter is not None:
            exporter.stop()
        engine.dispose()

    return Parts(logger, metrics, keeper, loop, stop, wake, close)


def run(args: argparse.Namespace) -> int:
    """Run the syncer until SIGTERM/SIGINT; 0 then, 2 on invalid configuration."""
    parts = build(args.config_file)
    stop_on_signals(parts.stop, parts.wake)
    parts.logger.info("started", {"holder": parts.keeper.lease.holder, "poll_interval_seconds": parts.loop.interval,
                                  "retry_deadline_seconds": parts.loop.retry_deadline})
    parts.keeper.start()
    try:
        parts.loop.run()
    finally:
        parts.keeper.stop()
        parts.close()
        parts.logger.info("exited")
    return 0
