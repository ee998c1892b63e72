"""The agent's local HTTP endpoints (plain HTTP, bound to 127.0.0.1; DESIGN.md §3.6).

* Force server (``force_policy_poll_cycle_port``, 8722), called by the CNI plugin:
  ``/force-asgs-for-container?container=H`` -> 200 ``updated container H``; 405 when
  ASG syncing is disabled (the CNI then installs static rules); 400 without a
  container; 500 with the reason on failure.
  ``/force-orphaned-asgs-cleanup?container=H`` likewise, except that a failed cleanup
  answers 200 ("deferred cleanup ...") as silk does, so a container deletion is never
  blocked: the next cycle retries the sweep.
* Debug server (``debug_server_port``, 8721): ``/log-level`` (GET shows, PUT/POST sets;
  monit's health check) and ``/asg-status`` (JSON: what each container enforces; the
  document is :class:`~.status.AgentStatus`, schema ``docs/asg-status.schema.json``).

Handlers get plain callables, so the servers know nothing of the agent's internals.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from urllib.parse import parse_qs, urlsplit

from dynamic_asgs.agent.status import StatusDocument
from dynamic_asgs.errors import ConfigError
from dynamic_asgs.http.server import Background, Handler, ThreadedServer
from dynamic_asgs.lager import Logger, parse_level

__all__ = ["LocalServer", "debug_server", "force_server"]

DISABLED = "ASG syncing has been disabled administratively"
Route = Callable[[str, Mapping[str, list[str]], bytes], tuple[int, str, str]]


class _Handler(Handler):
    server: _Server

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        route = self.server.routes.get(url.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 65536)) if length else b""
        if route is None:
            status, ctype, text = 404, "text/plain", "not found"
        else:
            try:
                status, ctype, text = route(self.command, parse_qs(url.query), body)
            except Exception as exc:  # a handler bug must answer, not kill the server thread
                self.server.log.error("handler-failed", exc, {"path": url.path})
                status, ctype, text = 500, "text/plain", f"internal error: {exc}"
        self.reply(status, text.encode(), f"{ctype}; charset=utf-8")

    do_GET = do_POST = do_PUT = _dispatch


class _Server(ThreadedServer):
    log: Logger

    def __init__(self, address: tuple[str, int], routes: dict[str, Route], log: Logger) -> None:
        self.routes = routes
        super().__init__(address, _Handler, log=log)


class LocalServer(Background):
    """A small threaded HTTP server on a local address, started in the background."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], logger: Logger, *, what: str) -> None:
        try:
            server = _Server((host, port), routes, logger)
        except OSError as exc:
            raise ConfigError(f"{what} {host}:{port}: cannot listen: {exc.strerror or exc}") from None
        super().__init__(server, name=f"http-{server.server_address[1]}")


def _container(query: Mapping[str, list[str]]) -> str:
    return (query.get("container") or [""])[0]


def force_server(
    *,
    host: str,
    port: int,
    enabled: bool,
    sync_container: Callable[[str], None],
    cleanup_container: Callable[[str], None],
    logger: Logger,
) -> LocalServer:
    """The CNI-facing force endpoints."""

    def force(_: str, query: Mapping[str, list[str]], __: bytes) -> tuple[int, str, str]:
        if not enabled:
            return 405, "text/plain", DISABLED
        handle = _container(query)
        if not handle:
            return 400, "text/plain", "no container specified"
        try:
            sync_container(handle)
        except Exception as exc:
            return 500, "text/plain", f"failed to update asgs for container {handle}: {exc}"
        return 200, "text/plain", f"updated container {handle}"

    def cleanup(_: str, query: Mapping[str, list[str]], __: bytes) -> tuple[int, str, str]:
        if not enabled:
            return 405, "text/plain", DISABLED
        handle = _container(query)
        if not handle:
            return 400, "text/plain", "no container specified"
        try:
            cleanup_container(handle)
        except Exception as exc:
            return 200, "text/plain", (f"deferred cleanup of ASGs for container {handle}: "
                                       f"will retry on next poll cycle ({exc})")
        return 200, "text/plain", f"cleaned up ASGs for container {handle}"

    routes: dict[str, Route] = {"/force-asgs-for-container": force, "/force-orphaned-asgs-cleanup": cleanup}
    return LocalServer(host, port, routes, logger.session("force-server"), what="force_policy_poll_cycle_port")


def debug_server(
    *, host: str, port: int, logger: Logger, status: Callable[[], StatusDocument]
) -> LocalServer:
    """``/log-level`` (GET shows, PUT/POST with the level as body sets) and ``/asg-status``.

    ``status`` returns the current document at once (the agent's is a snapshot: it never waits for a cycle).
    """

    def log_level(method: str, _: Mapping[str, list[str]], body: bytes) -> tuple[int, str, str]:
        if method == "GET":
            return 200, "text/plain", logger.level
        try:
            logger.level = parse_level(body.decode(errors="replace"))
        except ValueError as exc:
            return 400, "text/plain", str(exc)
        logger.info("log-level-changed", {"level": logger.level})
        return 200, "text/plain", logger.level

    def asg_status(_: str, __: Mapping[str, list[str]], ___: bytes) -> tuple[int, str, str]:
        return 200, "application/json", json.dumps(status().to_json(), indent=1)

    routes: dict[str, Route] = {"/log-level": log_level, "/asg-status": asg_status}
    return LocalServer(host, port, routes, logger.session("debug-server"), what="debug_server_port")
