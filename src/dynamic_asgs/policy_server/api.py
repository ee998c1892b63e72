"""The internal security-groups API (Starlette on uvicorn): ``/networking/v1/internal/security_groups``.

Contract (DESIGN.md §3.3; OpenAPI document: ``docs/policy-server-internal-api.yaml``):

* ``GET`` with ``space_guids``/``from``/``limit`` answers ``{"next", "security_groups"}`` from
  the worker's in-memory dataset (see :mod:`.dataset`); ``POST`` takes the same as a JSON
  body for long space lists. Bad parameters get 400 with ``{"error": ...}``; before the
  first dataset is loaded the answer is 503.
* Every answer carries ``ETag`` and ``X-Dataset-Version`` (the version it was computed
  from, so agents can report what they enforce). ``If-None-Match`` with the current ETag
  gets 304.
* **Blocking queries**: with ``If-None-Match`` and ``wait=S`` (at most 60), a request whose
  answer is unchanged is held until the dataset version changes *and* its answer differs
  (200), or until ``S`` seconds pass (304). Waiting costs one coroutine, not a thread, so a
  worker holds thousands, but not without bound (issue 13): at most
  ``max_blocking_queries`` per worker and ``max_blocking_queries_per_client`` per client
  address (:class:`_Seats`); past either the answer is 503 with ``Retry-After``. A held
  query whose client disconnects gives its seat back at once.
* **Bounded reads**: a POST body must arrive within ``body_timeout`` seconds of the head
  (else 408 and the connection is closed) and be at most 8 MiB; heads are bounded before
  the app sees them (:mod:`.guard`). Every refusal (400, 408, 503) is counted and logged
  through :class:`~dynamic_asgs.policy_server.refusals.Refusals`.

The fleet audit (issue 14; :mod:`.fleet`) adds two routes on the same port:

* ``PUT`` (or ``POST``) ``/networking/v1/internal/cell-reports`` takes one
  :class:`~dynamic_asgs.fleet.report.CellReport` (at most ``MAX_REPORT_BYTES``, within
  ``body_timeout``); a report the schema refuses gets 400 naming the field (413 when too
  large), counted and logged as ``invalid-report``. Accepted reports are buffered and
  written in batches; the answer is 202 with ``{"silent_after_seconds": S}``, how long the
  agent may stay quiet before its cell is shown silent.
* ``GET /networking/v1/internal/fleet`` with optional ``app`` and ``space`` answers the
  :class:`~dynamic_asgs.fleet.view.FleetView`, computed from the policy DB (so every
  worker of every instance answers for the whole fleet); 503 when the DB does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dynamic_asgs.errors import DatabaseError, ValidationError
from dynamic_asgs.fleet.report import MAX_REPORT_BYTES, REPORTS_PATH, CellReport
from dynamic_asgs.fleet.view import FLEET_PATH, FleetView
from dynamic_asgs.lager import Logger
from dynamic_asgs.policy_server.dataset import Dataset
from dynamic_asgs.policy_server.fleet import ReportBuffer, build_view, read_for_view
from dynamic_asgs.policy_server.guard import GUARD_STATE, Guard
from dynamic_asgs.policy_server.holder import DatasetHolder, HolderMetrics
from dynamic_asgs.policy_server.query import Query, QueryError, parse_get, parse_post
from dynamic_asgs.policy_server.refusals import Refusal, Refusals, Throttle
from dynamic_asgs.policy_server.settings import RequestLimits, load_settings
from dynamic_asgs.policydb.db import create_engine
from dynamic_asgs.policydb.reports import ReportStore
from dynamic_asgs.policydb.store import PolicyStore

__all__ = ["CONFIG_ENV", "FLEET_ROUTE", "REPORTS_ROUTE", "ROUTE", "ApiMetrics", "FleetService", "bridge_logging",
           "build_app", "create_app"]

ROUTE = "/networking/v1/internal/security_groups"
REPORTS_ROUTE = REPORTS_PATH
FLEET_ROUTE = FLEET_PATH
_FLEET_PARAMETER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Environment variable naming the config file (set by the server process for its workers).
CONFIG_ENV = "DASG_POLICY_SERVER_CONFIG"
VERSION_HEADER = "X-Dataset-Version"
CHANGED_AT_HEADER = "X-Dataset-Changed-At"  # UNIX time of the version's last change: agents report lag
_MAX_BODY = 8 << 20
#: Seconds a client refused a blocking query is asked to wait before trying again.
RETRY_AFTER_SECONDS = 5
#: The status recorded for a held query whose client went away (nginx's "client closed request"; never sent).
_GONE = 499


class ApiMetrics:
    """Request metrics; Go's ``InternalSecurityGroupsRequestTime`` as a histogram (its count is the request count)."""

    def __init__(self) -> None:
        self.requests = Histogram(
            "internal_security_groups_request_seconds", "Time to answer the internal security groups API",
            ["method", "status", "blocking"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                        2.5, 5, 10, 30, 60))
        self.waiting = Gauge("internal_security_groups_waiting_requests", "Blocking queries being held",
                             multiprocess_mode="livesum")
        self.refused = Counter("internal_requests_refused", "Requests refused, by reason (limits, bad input)",
                               ["reason"])
        self.fleet_requests = Histogram(
            "fleet_request_seconds", "Time to answer the cell-reports and fleet routes", ["route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.reports_written = Counter("fleet_reports_written", "Cell reports written to the policy DB")
        self.report_flushes = Histogram("fleet_report_flush_seconds", "Time to write one batch of cell reports",
                                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

    def flushed(self, rows: int, seconds: float) -> None:
        """Count one batch of cell reports written."""
        self.reports_written.inc(rows)
        self.report_flushes.observe(seconds)


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _version_headers(dataset: Dataset) -> dict[str, str]:
    return {VERSION_HEADER: str(dataset.version), CHANGED_AT_HEADER: f"{dataset.changed_at:.3f}"}


def _matches(header: str, etag: str) -> bool:
    candidates = [c.strip() for c in header.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


async def _read_body(request: Request, timeout: float, limit: int = _MAX_BODY) -> bytes:
    chunks, size = [], 0
    async with asyncio.timeout(timeout):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise QueryError(f"body: larger than {limit >> 20} MiB")
            chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(request: Request) -> None:
    """Return when the client goes away (the request's body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


class _Seats:
    """Blocking queries held by one worker, in total and per client address."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.total = 0
        self.by_client: dict[str, int] = {}

    def refusal(self, client: str) -> tuple[Refusal, str] | None:
        """Why a new blocking query of ``client`` cannot be held now, or ``None`` if it can."""
        if self.total >= self.limits.max_blocking_queries:
            return Refusal.BLOCKING_QUERIES, f"this worker holds {self.total} blocking queries, its maximum"
        held = self.by_client.get(client, 0)
        if held >= self.limits.max_blocking_queries_per_client:
            return Refusal.CLIENT_BLOCKING_QUERIES, f"this client has {held} blocking queries held, its maximum"
        return None

    @contextlib.contextmanager
    def seat(self, client: str) -> Iterator[None]:
        self.total += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        try:
            yield
        finally:
            self.total -= 1
            if (left := self.by_client.pop(client) - 1) > 0:
                self.by_client[client] = left


class _Endpoint:
    def __init__(self, holder: DatasetHolder, metrics: ApiMetrics, limits: RequestLimits, refusals: Refusals
                 ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.limits = limits
        self.refusals = refusals
        self.seats = _Seats(limits)

    async def handle(self, request: Request) -> Response:
        start = time.monotonic()
        response, blocking = await self._respond(request)
        self.metrics.requests.labels(method=request.method, status=str(response.status_code),
                                     blocking=str(blocking).lower()).observe(time.monotonic() - start)
        return response

    def _refuse(self, request: Request, reason: Refusal, status: int, message: str,
                headers: dict[str, str] | None = None) -> Response:
        self.refusals.refuse(reason, client=request.client.host if request.client else "", detail=message)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def _query(self, request: Request) -> Query | Response:
        params = request.query_params.multi_items()
        try:
            if request.method != "POST":
                return parse_get(params)
            return parse_post(await _read_body(request, self.limits.body_timeout), params)
        except QueryError as exc:
            return self._refuse(request, Refusal.INVALID_PARAMETER, 400, str(exc))
        except TimeoutError:
            return self._refuse(request, Refusal.BODY_TIMEOUT, 408, f"request body not received within "
                                f"{self.limits.body_timeout:g} s", {"Connection": "close"})
        except ClientDisconnect:
            return Response(status_code=_GONE)

    async def _respond(self, request: Request) -> tuple[Response, bool]:
        query = await self._query(request)
        if isinstance(query, Response):
            return query, False
        dataset, changed = self.holder.dataset, self.holder.changed
        if dataset is None:
            return _error(503, "the policy server has not loaded its dataset yet"), False
        condition = request.headers.get("if-none-match")
        if condition is None:
            return self._ok(dataset, query), False
        etag = dataset.etag(query.spaces, start=query.start, limit=query.limit)
        if not _matches(condition, etag):
            return self._ok(dataset, query), False
        if query.wait <= 0:
            return self._not_modified(dataset, etag), False
        client = request.client.host if request.client else ""
        if (refusal := self.seats.refusal(client)) is not None:
            reason, message = refusal
            return self._refuse(request, reason, 503, message, {"Retry-After": str(RETRY_AFTER_SECONDS)}), False
        with self.seats.seat(client):
            return await self._hold(request, query, condition, dataset, changed), True

    async def _hold(self, request: Request, query: Query, condition: str, dataset: Dataset,
                    changed: asyncio.Event) -> Response:
        """Wait for a dataset version whose answer differs from ``condition`` (no body is kept meanwhile)."""
        deadline = time.monotonic() + query.wait
        gone = asyncio.ensure_future(_disconnected(request))
        self.metrics.waiting.inc()
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                woken = asyncio.ensure_future(changed.wait())
                done, _ = await asyncio.wait((woken, gone), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if gone in done:
                    return Response(status_code=_GONE)
                if woken not in done:
                    break
                dataset, changed = self.holder.dataset or dataset, self.holder.changed
                if not _matches(condition, dataset.etag(query.spaces, start=query.start, limit=query.limit)):
                    return self._ok(dataset, query)
        finally:
            gone.cancel()
            self.metrics.waiting.dec()
        return self._not_modified(dataset, dataset.etag(query.spaces, start=query.start, limit=query.limit))

    @staticmethod
    def _ok(dataset: Dataset, query: Query) -> Response:
        answer = dataset.answer(query.spaces, start=query.start, limit=query.limit)
        return Response(answer.body, media_type="application/json",
                        headers={"ETag": answer.etag, **_version_headers(dataset)})

    @staticmethod
    def _not_modified(dataset: Dataset, etag: str) -> Response:
        return Response(status_code=304, headers={"ETag": etag, **_version_headers(dataset)})


@dataclass(frozen=True, slots=True)
class FleetService:
    """What the fleet routes of one worker use: the report store, the worker's buffer, the silence rule."""

    store: ReportStore
    buffer: ReportBuffer
    silent_after_intervals: int

    def view(self, app: str | None = None, space: str | None = None) -> FleetView:
        """The fleet view, read from the policy DB now (blocking: call it off the event loop)."""
        rows = read_for_view(self.store, app, space)
        return build_view(rows, silent_after_intervals=self.silent_after_intervals, app=app, space=space)


class _FleetEndpoints:
    def __init__(self, fleet: FleetService, metrics: ApiMetrics, limits: RequestLimits, refusals: Refusals) -> None:
        self.fleet = fleet
        self.metrics = metrics
        self.limits = limits
        self.refusals = refusals
        self.viewing = asyncio.Semaphore(1)  # one view at a time: bounded memory and DB connections per worker

    def _refuse(self, request: Request, reason: Refusal, status: int, message: str,
                headers: dict[str, str] | None = None) -> Response:
        self.refusals.refuse(reason, client=request.client.host if request.client else "", detail=message)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def report(self, request: Request) -> Response:
        start = time.monotonic()
        response = await self._report(request)
        self.metrics.fleet_requests.labels(route="cell-reports", status=str(response.status_code)).observe(
            time.monotonic() - start)
        return response

    async def _report(self, request: Request) -> Response:
        try:
            body = await _read_body(request, self.limits.body_timeout, MAX_REPORT_BYTES)
        except QueryError as exc:
            return self._refuse(request, Refusal.INVALID_REPORT, 413, f"cell report {exc}", {"Connection": "close"})
        except TimeoutError:
            return self._refuse(request, Refusal.BODY_TIMEOUT, 408, f"request body not received within "
                                f"{self.limits.body_timeout:g} s", {"Connection": "close"})
        except ClientDisconnect:
            return Response(status_code=_GONE)
        try:
            report = CellReport.from_bytes(body)
        except ValidationError as exc:
            return self._refuse(request, Refusal.INVALID_REPORT, 400, str(exc))
        buffer = self.fleet.buffer
        if buffer.full() and report.cell_id not in buffer.pending:
            return self._refuse(request, Refusal.REPORTS_BUFFER_FULL, 503, "this worker buffers its maximum of "
                                "cell reports until they are written", {"Retry-After": str(RETRY_AFTER_SECONDS)})
        try:
            await buffer.accept(report)
        except DatabaseError as exc:
            return _error(503, str(exc))
        silent_after = self.fleet.silent_after_intervals * report.interval_seconds
        return JSONResponse({"silent_after_seconds": silent_after}, status_code=202)

    async def view(self, request: Request) -> Response:
        start = time.monotonic()
        response = await self._view(request)
        self.metrics.fleet_requests.labels(route="fleet", status=str(response.status_code)).observe(
            time.monotonic() - start)
        return response

    async def _view(self, request: Request) -> Response:
        found: dict[str, str] = {}
        for name, value in request.query_params.multi_items():
            if name not in ("app", "space"):
                return self._refuse(request, Refusal.INVALID_PARAMETER, 400, f"{name[:64]}: unknown parameter")
            if name in found:
                return self._refuse(request, Refusal.INVALID_PARAMETER, 400, f"{name}: given more than once")
            if not _FLEET_PARAMETER.fullmatch(value):
                return self._refuse(request, Refusal.INVALID_PARAMETER, 400,
                                    f"{name}: not a guid (letters, digits, '_', '.', '-'; at most 128)")
            found[name] = value
        try:
            async with self.viewing:
                body = await asyncio.to_thread(self._body, found.get("app"), found.get("space"))
        except DatabaseError as exc:
            return _error(503, str(exc))
        return Response(body, media_type="application/json")

    def _body(self, app: str | None, space: str | None) -> bytes:
        return json.dumps(self.fleet.view(app, space).to_json(), separators=(",", ":")).encode()


class _LagerHandler(logging.Handler):
    """uvicorn's log records as lager lines, each kind at most once per 10 s (a client cannot flood the log)."""

    def __init__(self, logger: Logger) -> None:
        super().__init__(logging.INFO)
        self.logger = logger
        self.throttle = Throttle()

    def emit(self, record: logging.LogRecord) -> None:
        if self.throttle.admit(str(record.msg)) is None:
            return
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message = f"{message}: {type(error).__name__}: {error}"
        if record.levelno >= logging.WARNING:
            self.logger.error("server-error", message, {"logger": record.name})
        else:
            self.logger.info("server-event", {"logger": record.name, "message": message})


def bridge_logging(logger: Logger) -> None:
    """Send uvicorn's log records (startup, worker restarts, unhandled errors) to ``logger``."""
    target = logging.getLogger("uvicorn")
    target.handlers = [_LagerHandler(logger)]
    target.setLevel(logging.INFO)
    target.propagate = False


def build_app(holder: DatasetHolder, *, metrics: ApiMetrics, logger: Logger, limits: RequestLimits | None = None,
              on_shutdown: Callable[[], Any] | None = None, fleet: FleetService | None = None) -> Starlette:
    """The ASGI app serving ``holder``'s dataset (and the fleet routes, given ``fleet``).

    Its lifespan state carries the :class:`Guard` for uvicorn.
    """
    limits = limits or RequestLimits()
    refusals = Refusals(logger, metrics.refused)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await holder.start()
        if fleet is not None:
            await fleet.buffer.start()
        try:
            yield {GUARD_STATE: Guard(limits, refusals)}
        finally:
            if fleet is not None:
                await fleet.buffer.stop()
            await holder.stop()
            if on_shutdown is not None:
                on_shutdown()

    endpoint = _Endpoint(holder, metrics, limits, refusals)
    routes = [Route(ROUTE, endpoint.handle, methods=["GET", "POST"])]
    if fleet is not None:
        fleet_endpoints = _FleetEndpoints(fleet, metrics, limits, refusals)
        routes += [Route(REPORTS_ROUTE, fleet_endpoints.report, methods=["PUT", "POST"]),
                   Route(FLEET_ROUTE, fleet_endpoints.view, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


def create_app() -> Starlette:
    """uvicorn's app factory in each worker: settings from ``$DASG_POLICY_SERVER_CONFIG``."""
    settings = load_settings(os.environ[CONFIG_ENV])
    logger = Logger(f"{settings.log_prefix}.policy-server", level=settings.log_level).session(f"worker-{os.getpid()}")
    engine = create_engine(settings.database, pool_size=settings.pool_size, max_overflow=0,
                           pool_recycle=settings.connections_max_lifetime)
    store = PolicyStore(engine)
    bridge_logging(logger)
    holder = DatasetHolder(version=store.version, snapshot=store.snapshot, interval=settings.check_interval,
                           logger=logger, metrics=HolderMetrics())
    metrics = ApiMetrics()
    reports = ReportStore(engine)
    buffer = ReportBuffer(reports, interval=settings.report_flush_interval, logger=logger, on_flush=metrics.flushed)
    fleet = FleetService(reports, buffer, settings.silent_after_intervals)
    return build_app(holder, metrics=metrics, logger=logger, limits=settings.limits, on_shutdown=engine.dispose,
                     fleet=fleet)
