"""The small threaded HTTP servers of the daemons (agent endpoints, policy-server health, CC stand-in).

* :class:`ThreadedServer` handles each connection in its own daemon thread; with a TLS
  context it does the handshake there too, bounded by a timeout, so a client that never
  finishes its handshake holds one thread and never the accept loop.
* :class:`Handler` is their request handler's base: HTTP/1.1, one :meth:`~Handler.reply`,
  request lines logged at DEBUG through the server's logger (none without one).
* :class:`Background` serves one such server from a daemon thread. Its :meth:`~Background.stop`
  is safe before :meth:`~Background.start` and when called twice: ``shutdown()`` waits for
  ``serve_forever`` to return, so it is called only while the serving thread runs.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from dynamic_asgs.lager import Logger

__all__ = ["Background", "Handler", "ThreadedServer"]


class Handler(BaseHTTPRequestHandler):
    """Base of the request handlers of a :class:`ThreadedServer`."""

    server: ThreadedServer
    protocol_version = "HTTP/1.1"

    def reply(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        """Send one complete answer."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines go to the server's logger at DEBUG (stderr stays quiet)."""
        if self.server.log is not None:
            self.server.log.debug("request", {"line": format % args})


class ThreadedServer(ThreadingHTTPServer):
    """A threading HTTP server; TLS per connection when ``context`` is given."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 context: ssl.SSLContext | None = None, log: Logger | None = None) -> None:
        self.context = context
        self.log = log
        self._handler = handler
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handle one connection, after its TLS handshake when the server has a context."""
        if self.context is None:
            super().finish_request(request, client_address)
            return
        try:
            request.settimeout(10)
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            if self.log is not None:
                self.log.debug("tls-handshake-refused", {"client": client_address[0], "error": str(exc)})
            return
        try:
            self._handler(tls, client_address, self)
        finally:
            tls.close()


class Background:
    """``server`` served from a daemon thread named ``name``."""

    def __init__(self, server: ThreadingHTTPServer, *, name: str, poll_interval: float = 0.5) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval},
                                        name=name, daemon=True)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.server.server_address[1])

    def start(self) -> Self:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (when it serves) and close the listening socket."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout=10)
        self.server.server_close()
