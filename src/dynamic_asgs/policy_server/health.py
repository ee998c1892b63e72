"""The policy server's health endpoint: plain HTTP on 127.0.0.1:``health_check_port``.

``GET /health`` (or ``/``) reads the dataset version from the policy DB: 200
``{"healthy": true, "dataset_version": N}`` when the DB answers (which also proves the
schema is migrated), 503 ``{"healthy": false, "error": ...}`` otherwise. It runs in the
server's main process, beside the uvicorn workers, on loopback only (monit and the BOSH
DNS health check call it locally).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dynamic_asgs.errors import ConfigError, DynamicASGsError
from dynamic_asgs.http.server import Background, Handler, ThreadedServer
from dynamic_asgs.lager import Logger

__all__ = ["HealthServer"]


class _Handler(Handler):
    server: _Server
    timeout = 10

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/health"):
            self._send(404, {"error": "not found"})
            return
        try:
            version = self.server.check()
        except DynamicASGsError as exc:
            self._send(503, {"healthy": False, "error": str(exc)})
            return
        self._send(200, {"healthy": True, "dataset_version": version})

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        self.reply(status, json.dumps(doc).encode())


class _Server(ThreadedServer):
    log: Logger

    def __init__(self, port: int, check: Callable[[], int], log: Logger) -> None:
        self.check = check
        super().__init__(("127.0.0.1", port), _Handler, log=log)


class HealthServer(Background):
    """Serves the health endpoint in a background thread."""

    def __init__(self, port: int, check: Callable[[], int], log: Logger) -> None:
        try:
            server = _Server(port, check, log)
        except OSError as exc:
            raise ConfigError(f"health_check_port {port}: cannot listen: {exc.strerror or exc}") from exc
        super().__init__(server, name="health")
