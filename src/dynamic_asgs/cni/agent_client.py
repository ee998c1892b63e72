"""The CNI's calls to the agent's force endpoints (plain HTTP on the cell's loopback; DESIGN.md §3.6).

``sync`` asks for ``/force-asgs-for-container?container=<h>`` and ``cleanup`` for
``/force-orphaned-asgs-cleanup?container=<h>``. Both return the :class:`Answer`
(status and body); a transport failure (refused, timeout) raises
:class:`~dynamic_asgs.errors.UpstreamError`. Proxies from the environment are ignored:
the agent is always local.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

from dynamic_asgs.errors import UpstreamError

__all__ = ["AgentClient", "Answer", "ForceEndpoints"]

_MAX_BODY = 4096


@dataclass(frozen=True, slots=True)
class Answer:
    """The agent's answer: HTTP status and (trimmed) body text."""

    status: int
    body: str


class ForceEndpoints(Protocol):
    """What the plugin needs from the agent (real: :class:`AgentClient`)."""

    def sync(self, handle: str) -> Answer: ...

    def cleanup(self, handle: str) -> Answer: ...


class AgentClient:
    """Calls the force endpoints on ``address`` (``host:port``) with a bounded wait."""

    def __init__(self, address: str, *, timeout: float) -> None:
        self.base = f"http://{address}"
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def sync(self, handle: str) -> Answer:
        """Ask the agent to write the container's ASG chain now."""
        return self._get("/force-asgs-for-container", handle)

    def cleanup(self, handle: str) -> Answer:
        """Ask the agent to remove the chains of containers no longer in the store."""
        return self._get("/force-orphaned-asgs-cleanup", handle)

    def _get(self, path: str, handle: str) -> Answer:
        url = f"{self.base}{path}?container={quote(handle, safe='')}"
        try:
            with self._opener.open(url, timeout=self.timeout) as response:
                return Answer(int(response.status), response.read(_MAX_BODY).decode(errors="replace").strip())
        except urllib.error.HTTPError as exc:
            with exc:
                return Answer(int(exc.code), exc.read(_MAX_BODY).decode(errors="replace").strip())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UpstreamError(f"policy agent at {self.base}{path}: {reason}") from exc
