"""The agents' client for the policy server's internal security-groups API.

Interface (used by the vxlan-policy-agent and the fleet audit)::

    client = PolicyClient("https://policy-server.service.cf.internal:4003",
                          ca_file=..., cert_file=..., key_file=...)
    result = client.fetch(space_guids, etag=previous.etag, wait=30)
    if result.not_modified:      # keep enforcing what you have; result.dataset_version is current
        ...
    else:                        # result.groups: list[SecurityGroup]
        ...

Mechanisms:

* mutual TLS through :mod:`dynamic_asgs.tls` (TLS 1.2+, only the configured CA);
* ``If-None-Match`` with the previous ETag: an unchanged answer is a 304 without a body;
  with ``wait=S`` the server holds the request until the answer changes or S seconds pass,
  and the read timeout is S plus the normal timeout;
* long space lists go in a POST body instead of the URL;
* paging by ``from``/``limit``/``next`` when ``page_size`` is set; every page must come from
  the same dataset version (``X-Dataset-Version``), otherwise the fetch starts over;
* every answer is validated (JSON schema, then each group by
  :func:`~dynamic_asgs.asg.parse.parse_internal_group`, which drops invalid rules fail-closed);
  a group that cannot be parsed at all (e.g. ``rules`` nested a thousand deep) is dropped
  alone and named in :attr:`Result.dropped`: it grants nothing, the others still apply;
* connection errors, 429 and 5xx are retried with jittered backoff; every failure reaches
  the caller as :class:`~dynamic_asgs.errors.UpstreamError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from dynamic_asgs.asg.model import SecurityGroup
from dynamic_asgs.asg.parse import parse_internal_group
from dynamic_asgs.config import load_schema
from dynamic_asgs.errors import UpstreamError, ValidationError
from dynamic_asgs.fleet.report import REPORTS_PATH, CellReport
from dynamic_asgs.fleet.view import FLEET_PATH, FleetView
from dynamic_asgs.http.client import JsonHttp, Reply, RetryPolicy, Timeouts, validator
from dynamic_asgs.tls import client_context, session_for

__all__ = ["DEFAULT_RETRY", "PATH", "PolicyClient", "Result"]

PATH = "/networking/v1/internal/security_groups"
_SCHEMA = validator(load_schema("dynamic_asgs.policy_server", "schemas/security_groups_response.json"))
_MAX_URL = 6000
_RESTARTS = 3
#: Connection errors, 429 and 5xx: three tries within 15 s.
DEFAULT_RETRY = RetryPolicy(attempts=3, deadline=15.0)


@dataclass(frozen=True, slots=True)
class Result:
    """One fetch: the groups (empty when ``not_modified``), the ETag to send next time and the version."""

    groups: list[SecurityGroup] = field(default_factory=list)
    etag: str | None = None
    dataset_version: int | None = None
    not_modified: bool = False
    changed_at: float | None = None  # when the server's dataset last changed (UNIX time), if it says
    #: Groups of the answer that could not be parsed, with the reason (they grant nothing).
    dropped: tuple[str, ...] = ()


def _version(reply: Reply) -> int | None:
    value = reply.headers.get("X-Dataset-Version")
    return int(value) if value and value.isdigit() else None


def _changed_at(reply: Reply) -> float | None:
    try:
        return float(reply.headers.get("X-Dataset-Changed-At", ""))
    except ValueError:
        return None


class PolicyClient:
    """A client of one policy server URL."""

    def __init__(
        self, url: str, *, ca_file: str, cert_file: str, key_file: str, timeout: float = 5.0,
        page_size: int = 0, retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        context = client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file, what="policy client")
        self._http = JsonHttp(url, session_for(context), service="policy server",
                              timeouts=Timeouts(connect=timeout, read=timeout), retry=retry)
        self.timeout = timeout
        self.page_size = page_size

    def close(self) -> None:
        self._http.session.close()

    def fetch(self, space_guids: Iterable[str], *, etag: str | None = None, wait: float | None = None) -> Result:
        """The groups for ``space_guids`` (global groups included), or ``not_modified`` for ``etag``."""
        spaces = sorted(set(space_guids))
        for _ in range(_RESTARTS):
            first = self._page(spaces, 0, etag, wait)
            if first.status == 304:
                return Result(etag=first.headers.get("ETag", etag), dataset_version=_version(first),
                              not_modified=True, changed_at=_changed_at(first))
            result = self._rest(spaces, first)
            if result is not None:
                return result
        raise UpstreamError(f"policy server: the dataset changed while paging, {_RESTARTS} times")

    def report(self, report: CellReport) -> None:
        """Send this cell's report (``PUT`` of its compact JSON); raises :class:`UpstreamError` when refused."""
        self._http.request("PUT", REPORTS_PATH, schema=None, endpoint=REPORTS_PATH, accept=(200, 202, 204),
                           max_bytes=64 * 1024, headers={"Content-Type": "application/json"}, data=report.to_bytes())

    def fleet(self, *, app: str | None = None, space: str | None = None) -> FleetView:
        """The fleet view (every cell's last report), optionally for one app or space; validated."""
        params = "&".join(f"{k}={quote(v, safe='')}" for k, v in (("app", app), ("space", space)) if v)
        reply = self._http.request("GET", f"{FLEET_PATH}?{params}" if params else FLEET_PATH, schema=None,
                                   endpoint=FLEET_PATH, max_bytes=256 << 20, headers={"Accept": "application/json"})
        try:
            return FleetView.from_json(reply.body)
        except ValidationError as exc:
            raise UpstreamError(f"policy server: GET {FLEET_PATH}: {exc}") from exc

    def _rest(self, spaces: list[str], first: Reply) -> Result | None:
        """Fetch the pages after ``first``; ``None`` if one of them is from another dataset version."""
        version, bodies, reply = _version(first), [first.body], first
        while reply.body["next"]:
            reply = self._page(spaces, reply.body["next"], None, None)
            if _version(reply) != version:
                return None
            bodies.append(reply.body)
        groups: list[SecurityGroup] = []
        dropped: list[str] = []
        for raw in (raw for body in bodies for raw in body["security_groups"]):
            try:
                groups.append(parse_internal_group(raw))
            except (ValidationError, ValueError, RecursionError) as exc:
                dropped.append(f"{_label(raw)}: {str(exc)[:300]}")
        return Result(groups=groups, etag=first.headers.get("ETag"), dataset_version=version,
                      changed_at=_changed_at(first), dropped=tuple(dropped))

    def _page(self, spaces: list[str], start: int, etag: str | None, wait: float | None) -> Reply:
        params: dict[str, Any] = {}
        if start:
            params["from"] = start
        if self.page_size:
            params["limit"] = self.page_size
        headers = {"Accept": "application/json"}
        read_timeout = self.timeout
        if etag:
            headers["If-None-Match"] = etag
            if wait:
                params["wait"] = int(wait) if float(wait).is_integer() else wait
                read_timeout = float(wait) + self.timeout
        query = "&".join(f"{k}={v}" for k, v in params.items())
        joined = ",".join(quote(s, safe="") for s in spaces)
        accept = (200, 304) if etag else (200,)
        if len(joined) + len(query) < _MAX_URL:
            query = "&".join(filter(None, [f"space_guids={joined}" if spaces else "", query]))
            return self._http.request("GET", f"{PATH}?{query}" if query else PATH, schema=_SCHEMA, endpoint=PATH,
                                      accept=accept, headers=headers, read_timeout=read_timeout)
        headers["Content-Type"] = "application/json"
        return self._http.request("POST", f"{PATH}?{query}" if query else PATH, schema=_SCHEMA, endpoint=PATH,
                                  accept=accept, headers=headers, read_timeout=read_timeout,
                                  data=json.dumps({"space_guids": spaces}))



def _label(raw: Any) -> str:
    """A group's guid (and name) for a report, whatever shape the entry has."""
    if not isinstance(raw, dict):
        return f"security group ({type(raw).__name__})"
    guid, name = raw.get("guid"), raw.get("name")
    guid = guid if isinstance(guid, str) else "?"
    return f"security group {guid[:64]!r}" + (f" ({name[:64]!r})" if isinstance(name, str) else "")
