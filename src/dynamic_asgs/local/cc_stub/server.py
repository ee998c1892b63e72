"""The CC stand-in's servers: UAA + CC v3 (TLS), CC internal (mutual TLS), control (plain, loopback).

Cloud Controller and UAA cannot run here, so tests, the local environment and the
benchmarks talk to this stand-in, which speaks their wire formats:

* public port (TLS): ``POST /oauth/token`` (client credentials, HTTP Basic) and
  ``GET /v3/security_groups`` (bearer token; ``page``/``per_page`` paging, the ``guids``,
  ``names``, ``running_space_guids``, ``staging_space_guids`` and ``globally_enabled_*``
  filters, CC's pagination links and error bodies);
* internal port (mutual TLS, client certificate required): ``GET /internal/v4/asg_latest_update``;
* control port (plain HTTP on 127.0.0.1): ``GET/PUT /faults``, ``GET /stats``,
  ``POST /reset`` (counts and faults), ``POST /touch`` (bump ``last_update``),
  ``POST /revoke-tokens`` (CC refuses the tokens issued so far).

A watcher re-reads the ASG file when its size, mtime or inode change and bumps
``last_update`` when the new file loads (a file that fails to load is logged and the old
data kept). Each connection's TLS handshake runs in its handler thread, so a slow or
refused client does not hold up the others.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import threading
import time
from base64 import b64decode
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dynamic_asgs.errors import InputError
from dynamic_asgs.http.server import Background, Handler, ThreadedServer
from dynamic_asgs.lager import Logger
from dynamic_asgs.local.cc_stub.catalog import load_catalog
from dynamic_asgs.local.cc_stub.state import StubState, cc_error

__all__ = ["FileWatcher", "StubServer"]

Reply = tuple[int, bytes]


class _Server(ThreadedServer):
    request_queue_size = 256
    log: Logger

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext | None,
                 route: Callable[[_Handler], Reply], log: Logger) -> None:
        self.route = route
        super().__init__(address, _Handler, context=context, log=log)


class _Handler(Handler):
    server: _Server
    timeout = 30

    def _dispatch(self) -> None:
        try:
            status, body = self.server.route(self)
        except _Reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.reply(status, body)

    do_GET = do_POST = do_PUT = _dispatch

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, 1 << 20)) if length else b""


class _Reset(Exception):
    """Close the connection without an answer (the reset fault)."""


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class StubServer:
    """The three servers over one :class:`StubState`."""

    def __init__(self, state: StubState, *, host: str, public: tuple[int, ssl.SSLContext],
                 internal: tuple[int, ssl.SSLContext], control_port: int, log: Logger) -> None:
        self.state = state
        self.log = log
        self._servers = [
            _Server((host, public[0]), public[1], self._public, log.session("public")),
            _Server((host, internal[0]), internal[1], self._internal, log.session("internal")),
            _Server(("127.0.0.1", control_port), None, self._control, log.session("control")),
        ]
        self.host = host
        self._background = [Background(s, name=f"cc-stub-{n}", poll_interval=0.2)
                            for n, s in zip(("public", "internal", "control"), self._servers, strict=True)]

    @property
    def ports(self) -> dict[str, int]:
        names = ("public", "internal", "control")
        return {n: b.port for n, b in zip(names, self._background, strict=True)}

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.ports['public']}"

    def start(self) -> None:
        for background in self._background:
            background.start()

    def stop(self) -> None:
        for background in self._background:
            background.stop()

    def _faulty(self, handler: _Handler, path: str, serve: Callable[[], Reply]) -> Reply:
        self.state.count(path)
        latency, action = self.state.take_fault(path)
        if latency:
            time.sleep(latency)
        if action == "reset":
            raise _Reset
        if action == "fail":
            status = self.state.faults_snapshot()["error_status"]
            return status, cc_error("injected failure", "CF-ServiceUnavailable", 10015)
        status, body = serve()
        if action == "malformed" and status == 200:
            body = body[: max(1, len(body) // 2)]
        return status, body

    def _public(self, handler: _Handler) -> Reply:
        url = urlsplit(handler.path)
        if url.path == "/oauth/token" and handler.command == "POST":
            return self._faulty(handler, url.path, lambda: self._token(handler))
        if url.path == "/v3/security_groups" and handler.command == "GET":
            def listing() -> Reply:
                if not self.state.token_valid(handler.headers.get("Authorization")):
                    return 401, cc_error("Invalid Auth Token", "CF-InvalidAuthToken", 1000)
                reply = self.state.listing(parse_qs(url.query), self.base_url)
                self.state.after_page()
                return reply
            return self._faulty(handler, url.path, listing)
        return 404, cc_error("Unknown request", "CF-NotFound", 10000)

    def _token(self, handler: _Handler) -> Reply:
        form = parse_qs(handler.body().decode("utf-8", "replace"))
        try:
            user, _, password = b64decode(handler.headers.get("Authorization", "")[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        if (user, password) != (self.state.client_id, self.state.client_secret):
            return 401, _json({"error": "unauthorized", "error_description": "Bad credentials"})
        if form.get("grant_type") != ["client_credentials"]:
            return 400, _json({"error": "unsupported_grant_type"})
        return 200, _json(self.state.issue_token())

    def _internal(self, handler: _Handler) -> Reply:
        path = urlsplit(handler.path).path
        if path == "/internal/v4/asg_latest_update" and handler.command == "GET":
            return self._faulty(handler, path, lambda: (200, _json({"last_update": self.state.last_update})))
        return 404, cc_error("Unknown request", "CF-NotFound", 10000)

    def _control(self, handler: _Handler) -> Reply:
        path, method = urlsplit(handler.path).path, handler.command
        if path == "/stats" and method == "GET":
            return 200, _json(self.state.stats_snapshot())
        if path == "/faults" and method == "GET":
            return 200, _json(self.state.faults_snapshot())
        if path == "/faults" and method == "PUT":
            try:
                changes = json.loads(handler.body() or b"{}")
                if not isinstance(changes, dict):
                    raise InputError("faults must be a JSON object")
                return 200, _json(self.state.set_faults(changes))
            except (ValueError, InputError) as exc:
                return 400, _json({"error": str(exc)})
        if path == "/reset" and method == "POST":
            self.state.reset()
            return 200, _json({"reset": True})
        if path == "/revoke-tokens" and method == "POST":
            self.state.revoke_tokens()
            return 200, _json({"revoked": True})
        if path == "/touch" and method == "POST":
            return 200, _json({"last_update": self.state.bump()})
        return 404, _json({"error": "not found"})


class FileWatcher:
    """Re-reads the ASG file when it changes; a file that fails to load keeps the old data."""

    def __init__(self, path: Path, state: StubState, *, base_url: str, log: Logger, interval: float = 0.2) -> None:
        self.path = path
        self.state = state
        self.base_url = base_url
        self.log = log
        self.interval = interval
        self._stop = threading.Event()
        self._seen = self._stat()
        self._thread = threading.Thread(target=self._run, name="asg-file-watcher", daemon=True)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            current = self._stat()
            if current is None or current == self._seen:
                continue
            self._seen = current
            try:
                catalog = load_catalog(self.path, base_url=self.base_url)
            except InputError as exc:
                self.log.error("reload-failed", exc, {"note": "keeping the previous security groups"})
                continue
            last_update = self.state.replace_catalog(catalog)
            self.log.info("reloaded", {"security_groups": len(catalog.groups), "last_update": last_update})
