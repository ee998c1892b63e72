"""A hostile Cloud Controller (with UAA) over TLS, and servers on other origins, for the syncer's fault tests.

:class:`HostileCC` speaks CC's wire format: ``POST /oauth/token`` (client credentials,
HTTP Basic) and ``GET /v3/security_groups`` (bearer token, ``page``/``per_page``) on its
public TLS port, ``GET /internal/v4/asg_latest_update`` on a mutual-TLS port. Pages carry
``next.href`` on CC's external domain (``https://api.example.com``), never the origin the
syncer is configured with, as a real CC behind cf-deployment's internal host name does.
Any endpoint can be switched to a hostile answer with :meth:`HostileCC.inject`:

* :class:`Redirect` - a 3xx to wherever the test likes;
* :class:`Drip` - the status line and headers, or the body, one byte per ``interval``;
* :class:`Endless` - pages whose ``next`` never ends, repeats a page or contradicts the totals;
* :class:`Oversized` - a body of ``size`` bytes, with or without a Content-Length;
* :class:`Raw` - any bytes as a 200.

It counts requests per path, the pages asked for, the bytes it managed to send of an
oversized body, and how long each drip lasted before the client hung up.
:class:`Elsewhere` is another origin (TLS with a certificate the syncer trusts, or plain
HTTP) answering anything with an attacker's dataset (a group granting everything) and
counting who asked: a syncer that follows a redirect there would store it.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from dynamic_asgs.http.server import Background, Handler, ThreadedServer
from dynamic_asgs.local.configs import CCEndpoints, SyncerConfig
from dynamic_asgs.local.pki import Pki, make_pki
from dynamic_asgs.tls import server_context

__all__ = ["ATTACKER", "Drip", "Elsewhere", "Endless", "HostileCC", "Oversized", "Raw", "Redirect", "cc_resource",
           "listing"]

TOKEN = "/oauth/token"
LATEST = "/internal/v4/asg_latest_update"
GROUPS = "/v3/security_groups"
EXTERNAL = "https://api.example.com"
CLIENT, SECRET = "network-policy", "network-policy-secret"
_DRIP_LIMIT = 120.0


def cc_resource(guid: str, name: str | None = None, *, rules: list[Any] | None = None,
                running_spaces: tuple[str, ...] = (), staging_spaces: tuple[str, ...] = (),
                running: bool = False, staging: bool = False) -> dict[str, Any]:
    """One security group as CC's ``/v3/security_groups`` renders it."""
    return {
        "guid": guid, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "name": name if name is not None else f"asg-{guid}",
        "globally_enabled": {"running": running, "staging": staging},
        "rules": rules if rules is not None else [{"protocol": "tcp", "destination": "10.0.0.1", "ports": "443"}],
        "relationships": {"staging_spaces": {"data": [{"guid": g} for g in staging_spaces]},
                          "running_spaces": {"data": [{"guid": g} for g in running_spaces]}},
        "links": {"self": {"href": f"{EXTERNAL}/v3/security_groups/{guid}"}},
    }


#: What another origin serves: one global group that opens everything.
ATTACKER = [cc_resource("attacker", rules=[{"protocol": "all", "destination": "0.0.0.0/0"}], running=True,
                        staging=True)]


def listing(resources: list[Any], *, page: int, per_page: int, total: int | None = None,
            pages: int | None = None, next_page: int | None = None) -> bytes:
    """A page of ``/v3/security_groups`` holding ``resources`` (CC's pagination object, hrefs on CC's domain)."""
    def href(n: int) -> dict[str, str]:
        return {"href": f"{EXTERNAL}/v3/security_groups?page={n}&per_page={per_page}"}

    pagination: dict[str, Any] = {"total_results": len(resources) if total is None else total,
                                  "first": href(1), "next": None if next_page is None else href(next_page),
                                  "previous": href(page - 1) if page > 1 else None}
    if pages is not None:
        pagination["total_pages"] = pages
        pagination["last"] = href(pages)
    return json.dumps({"pagination": pagination, "resources": resources}).encode()


@dataclass(frozen=True)
class Redirect:
    status: int
    location: str


@dataclass(frozen=True)
class Drip:
    """The answer one byte per ``interval`` s: from the status line (``headers``) or after the headers."""

    part: str = "body"
    interval: float = 0.1


@dataclass(frozen=True)
class Endless:
    """Pages of ``size`` groups, ``next`` always set: to the following page or to ``next_page`` (e.g. 1).

    ``total``/``pages`` are what page 1 announces (``pages`` None: no ``total_pages``), each
    later page ``step`` groups and one page more (so its own ``next`` never looks past its
    own last page); ``fresh`` False repeats page 1's groups on every page.
    """

    total: int
    pages: int | None
    size: int = 100
    next_page: int | None = None
    fresh: bool = True
    step: int = 0


@dataclass(frozen=True)
class Oversized:
    size: int
    declared: bool = True


@dataclass(frozen=True)
class Raw:
    body: bytes


Fault = Redirect | Drip | Endless | Oversized | Raw


class _Server(ThreadedServer):
    owner: Any


class _Handler(Handler):
    server: _Server
    timeout = 30

    def do_GET(self) -> None:
        self.server.owner.answer(self)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.owner.answer(self)



def _serve(owner: Any, context: ssl.SSLContext | None) -> Background:
    server = _Server(("127.0.0.1", 0), _Handler, context=context)
    server.owner = owner
    return Background(server, name="hostile-cc").start()


class HostileCC:
    """CC + UAA on TLS ports whose answers :meth:`inject` turns hostile (see the module docstring)."""

    def __init__(self, directory: Path, groups: list[dict[str, Any]]) -> None:
        self.pki: Pki = make_pki(directory, name="cc")
        self.groups = groups
        self.stamp = 1
        self.generation = 1
        self.faults: dict[str, Fault] = {}
        self.hits: Counter[str] = Counter()
        self.pages: list[int] = []
        self.sent: list[int] = []
        self.hangups: list[float] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        cert, key = str(self.pki.server.cert), str(self.pki.server.key)
        self._public = _serve(self, server_context(ca_file=None, cert_file=cert, key_file=key,
                                                   require_client_cert=False))
        self._internal = _serve(self, server_context(ca_file=str(self.pki.ca.cert_path), cert_file=cert,
                                                     key_file=key))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._public.port}"

    @property
    def internal_url(self) -> str:
        return f"https://127.0.0.1:{self._internal.port}"

    @property
    def last_update(self) -> str:
        return f"2026-01-01T00:{self.stamp // 60 % 60:02d}:{self.stamp % 60:02d}.{self.stamp:09d}Z"

    def inject(self, path: str, fault: Fault | None) -> None:
        """Answer ``path`` with ``fault`` from now on (None: behave)."""
        with self._lock:
            if fault is None:
                self.faults.pop(path, None)
            else:
                self.faults[path] = fault

    def publish(self, groups: list[dict[str, Any]] | None = None) -> None:
        """Serve ``groups`` (or the same again) under a new ``last_update``."""
        with self._lock:
            if groups is not None:
                self.groups = groups
            self.stamp += 1

    def revoke(self) -> None:
        """Refuse the tokens issued so far (the next request gets a 401, the client a new token)."""
        with self._lock:
            self.generation += 1

    def syncer_config(self, database: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """A syncer configuration for this CC."""
        cc = CCEndpoints(url=self.url, internal_url=self.internal_url, ca_cert=str(self.pki.ca.cert_path),
                         client_cert=str(self.pki.client.cert), client_key=str(self.pki.client.key),
                         client_id=CLIENT, client_secret=SECRET)
        return SyncerConfig(database=database, cc=cc, extra=extra).to_json()

    def close(self) -> None:
        self.closing.set()
        for server in (self._public, self._internal):
            server.stop()

    # -- answers ------------------------------------------------------------------------------

    def answer(self, handler: _Handler) -> None:
        path, _, query = handler.path.partition("?")
        params = parse_qs(query)
        with self._lock:
            self.hits[path] += 1
            fault = self.faults.get(path)
            groups, stamp, token = list(self.groups), self.last_update, f"tok{self.generation}"
        page = int(params.get("page", ["1"])[0]) if path == GROUPS else 0
        if page:
            self.pages.append(page)
        match fault:
            case Redirect(status, location):
                handler.reply(status, b"", Location=location)
            case Drip(part, interval):
                self._drip(handler, b" " * 30_000 + self._normal(handler, path, params, groups, stamp, token)[1],
                           part, interval)
            case Endless():
                handler.reply(200, self._endless(fault, page, int(params.get("per_page", ["50"])[0])))
            case Oversized(size, declared):
                self._oversized(handler, size, declared)
            case Raw(body):
                handler.reply(200, body)
            case None:
                handler.reply(*self._normal(handler, path, params, groups, stamp, token))

    @staticmethod
    def _normal(handler: _Handler, path: str, params: dict[str, list[str]], groups: list[dict[str, Any]],
                stamp: str, token: str) -> tuple[int, bytes]:
        if path == TOKEN:
            basic = base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode()
            if handler.headers.get("Authorization") != f"Basic {basic}":
                return 401, b'{"error": "unauthorized"}'
            return 200, json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 3600}).encode()
        if handler.headers.get("Authorization") != f"bearer {token}":
            return 401, b'{"errors": [{"title": "CF-InvalidAuthToken"}]}'
        if path == LATEST:
            return 200, json.dumps({"last_update": stamp}).encode()
        if path != GROUPS:
            return 404, b'{"errors": [{"title": "CF-NotFound"}]}'
        page, per_page = int(params.get("page", ["1"])[0]), int(params.get("per_page", ["50"])[0])
        pages = max(1, -(-len(groups) // per_page))
        chunk = groups[(page - 1) * per_page: page * per_page]
        return 200, listing(chunk, page=page, per_page=per_page, total=len(groups), pages=pages,
                            next_page=page + 1 if page < pages else None)

    @staticmethod
    def _endless(fault: Endless, page: int, per_page: int) -> bytes:
        number = page if fault.fresh else 1
        resources = [cc_resource(f"endless-{number}-{i}") for i in range(fault.size)]
        grown = fault.step and page - 1
        pages = None if fault.pages is None else fault.pages + (page - 1 if fault.step else 0)
        return listing(resources, page=page, per_page=per_page, total=fault.total + grown * fault.step, pages=pages,
                       next_page=fault.next_page if fault.next_page is not None else page + 1)

    def _drip(self, handler: _Handler, body: bytes, part: str, interval: float) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        data = head + body
        start = time.monotonic()
        try:
            if part == "body":
                handler.wfile.write(head)
                data = body
            for i in range(len(data)):
                if self.closing.is_set() or time.monotonic() - start > _DRIP_LIMIT:
                    break
                handler.wfile.write(data[i:i + 1])
                time.sleep(interval)
        except OSError:
            self.hangups.append(time.monotonic() - start)
        handler.close_connection = True

    def _oversized(self, handler: _Handler, size: int, declared: bool) -> None:
        block, sent = b" " * 65536, 0
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header(*(("Content-Length", str(size)) if declared else ("Transfer-Encoding", "chunked")))
        handler.end_headers()
        try:
            while sent < size and not self.closing.is_set():
                handler.wfile.write(block if declared else b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
            if not declared:
                handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        self.sent.append(sent)
        handler.close_connection = True


class Elsewhere:
    """Another origin: answers any request with :data:`ATTACKER` (or a token, or a last_update) and counts them."""

    def __init__(self, pki: Pki | None) -> None:
        context = None if pki is None else server_context(ca_file=None, cert_file=str(pki.server.cert),
                                                          key_file=str(pki.server.key), require_client_cert=False)
        self.requests = 0
        self._server = _serve(self, context)
        self.scheme = "http" if pki is None else "https"

    @property
    def port(self) -> int:
        return self._server.port

    def url(self, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}"

    def answer(self, handler: _Handler) -> None:
        self.requests += 1
        if handler.command == "POST":
            handler.reply(200, json.dumps({"access_token": "evil", "token_type": "bearer", "expires_in": 3600})
                          .encode())
        elif LATEST in handler.path:
            handler.reply(200, b'{"last_update": "2099-01-01T00:00:00Z"}')
        else:
            handler.reply(200, listing(ATTACKER, page=1, per_page=5000, pages=1))

    def close(self) -> None:
        self._server.stop()
