"""A stand-in for silk's vxlan-policy-agent force server, as cf-deployment runs it beside our agent.

silk-release's vxlan-policy-agent serves three paths on ``force_policy_poll_cycle_port``
(cmd/vxlan-policy-agent/main.go, handlers/*.go), for any method, exact paths only:

* ``/force-policy-poll-cycle``: runs a c2c policy cycle; 200 with an empty body, or 500
  ``failed to force policy poll cycle: <err>``. Here the cycle is ``poll_cycle`` (a callable a
  test may use to block or fail it; an exception is the error).
* ``/force-asgs-for-container`` and ``/force-orphaned-asgs-cleanup``: with ``enable_asg_syncing:
  false`` (the default here, and cf-deployment's with dynamic-asgs) 405 ``ASG syncing has been
  disabled administratively`` whatever the query. With ``enable_asg_syncing=True`` they answer as
  silk's handlers do when the ASG update succeeds (400 ``no container specified`` without
  ``container``; else 200 ``updated container <h>`` / ``cleaned up ASGs for container <h>``) but
  enforce nothing: that is the agent under test's job.
* anything else: 404 ``404 page not found`` (Go's ServeMux).

Every request is recorded in :attr:`SilkAgent.calls`. It listens on 127.0.0.1 (a free port);
requests are small and bounded (the body is never read, sockets time out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from dynamic_asgs.http.server import Background, ThreadedServer

__all__ = ["DISABLED", "AgentCall", "SilkAgent"]

DISABLED = "ASG syncing has been disabled administratively"


@dataclass(frozen=True)
class AgentCall:
    method: str
    path: str
    container: str | None  # the ``container`` query parameter, if any
    status: int


class SilkAgent:
    """Start with ``with SilkAgent() as agent:``; point the CNI at :attr:`address`."""

    def __init__(self, *, enable_asg_syncing: bool = False, poll_cycle: Callable[[], None] | None = None) -> None:
        self.enable_asg_syncing = enable_asg_syncing
        self.poll_cycle = poll_cycle
        self.calls: list[AgentCall] = []
        self._server = Background(ThreadedServer(("127.0.0.1", 0), _handler_for(self)), name="silk-agent")

    @property
    def address(self) -> str:
        """``host:port``, as silk-cni's ``policy_agent_force_poll_address``."""
        return f"127.0.0.1:{self._server.port}"

    def paths(self) -> list[str]:
        """The paths called so far, in order."""
        return [call.path for call in self.calls]

    def __enter__(self) -> SilkAgent:
        self._server.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.stop()

    def answer(self, path: str, container: str | None) -> tuple[int, str]:
        """Status and body for a request (silk's handlers' logic)."""
        if path == "/force-policy-poll-cycle":
            try:
                if self.poll_cycle is not None:
                    self.poll_cycle()
            except Exception as exc:
                return 500, f"failed to force policy poll cycle: {exc}"
            return 200, ""
        if path in ("/force-asgs-for-container", "/force-orphaned-asgs-cleanup"):
            if not self.enable_asg_syncing:
                return 405, DISABLED
            if not container:
                return 400, "no container specified"
            if path == "/force-asgs-for-container":
                return 200, f"updated container {container}"
            return 200, f"cleaned up ASGs for container {container}"
        return 404, "404 page not found\n"


def _handler_for(agent: SilkAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            url = urlsplit(self.path)
            values = parse_qs(url.query).get("container")
            container = values[0] if values else None
            status, body = agent.answer(url.path, container)
            agent.calls.append(AgentCall(self.command, url.path, container, status))
            data = body.encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the calls are recorded instead."""

    return Handler
