"""Cloud Controller: "did the ASGs change?" and a consistent listing of all of them.

* :meth:`CloudController.last_update` is one request to ``/internal/v4/asg_latest_update``
  on CC's mutual-TLS port. Its value, normalised to UTC with nanoseconds, is what the
  syncer compares between polls. An old CC without the endpoint (404) yields ``None``:
  every poll then lists.
* :meth:`CloudController.security_groups` pages through ``/v3/security_groups`` and
  re-reads ``last_update`` after every page (DESIGN.md §3.1). If it moved, the listing
  started over; after ``restarts`` tries it raises :class:`UnstableListing`. Pages are
  requested by number on the configured CC URL: the ``next.href`` CC returns carries
  its external host name, which the syncer may not be able to reach.
* A listing must also add up: every guid once, as many resources as ``total_results``.
  Anything else is an :class:`UpstreamError`, so a torn listing never reaches the DB.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from dynamic_asgs.cc.http import JsonHttp, Reply, validator
from dynamic_asgs.cc.uaa import TokenSource
from dynamic_asgs.config import load_schema
from dynamic_asgs.errors import UnstableListing, UpstreamError

__all__ = ["CloudController", "Listing", "normalize_timestamp"]

_LATEST = validator(load_schema("dynamic_asgs.cc", "schemas/asg_latest_update.json"))
_PAGE = validator(load_schema("dynamic_asgs.cc", "schemas/security_groups_page.json"))
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})$"
)
LATEST_PATH = "/internal/v4/asg_latest_update"
GROUPS_PATH = "/v3/security_groups"


def normalize_timestamp(text: str) -> str:
    """``text`` (RFC 3339, any offset, up to ns) as ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`` in UTC."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp")
    day, clock, fraction, offset = match.groups()
    zone = "+00:00" if offset in ("Z", "z") else offset
    if len(zone) == 5:
        zone = f"{zone[:3]}:{zone[3:]}"
    moment = dt.datetime.fromisoformat(f"{day}T{clock}{zone}").astimezone(dt.UTC)
    nanos = (fraction or "").ljust(9, "0")[:9]
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos}Z"


@dataclass(frozen=True, slots=True)
class Listing:
    """A consistent listing: CC's resources in CC's order, and the ``last_update`` it belongs to."""

    resources: list[dict[str, Any]]
    last_update: str | None
    pages: int
    attempts: int


class CloudController:
    """Reads security groups from CC's v3 API (``api``) and its internal mTLS API (``internal``)."""

    def __init__(
        self, *, api: JsonHttp, internal: JsonHttp, tokens: TokenSource, page_size: int = 5000, restarts: int = 3,
    ) -> None:
        self._api = api
        self._internal = internal
        self._tokens = tokens
        self.page_size = page_size
        self.restarts = restarts

    def last_update(self) -> str | None:
        """CC's ``last_update`` (normalised), or ``None`` when CC lacks the endpoint."""
        reply = self._authorized(self._internal, LATEST_PATH, schema=_LATEST, accept=(200, 404))
        if reply.status == 404:
            return None
        raw = str(reply.body["last_update"])
        try:
            return normalize_timestamp(raw)
        except ValueError as exc:
            raise UpstreamError(f"cloud controller: GET {LATEST_PATH}: {exc}") from exc

    def security_groups(self, *, last_update: str | None = None) -> Listing:
        """Every security group, consistent with one ``last_update`` value.

        ``last_update`` is the value the caller just read (saves a request); the listing
        is checked against it after every page.
        """
        expected = last_update if last_update is not None else self.last_update()
        for attempt in range(1, self.restarts + 1):
            resources, pages, current = self._pages(expected)
            if current == expected:
                return Listing(resources, expected, pages, attempt)
            expected = current
        raise UnstableListing(
            f"cloud controller: security groups changed while being listed ({self.restarts} attempts); "
            "keeping the stored data"
        )

    def _pages(self, expected: str | None) -> tuple[list[dict[str, Any]], int, str | None]:
        """Page through the listing; stop early (returning the new value) if last_update moves."""
        resources: list[dict[str, Any]] = []
        seen: set[str] = set()
        page, total = 1, None
        while True:
            body = self._page(page)
            current = self.last_update() if expected is not None else None
            if current != expected:
                return [], page, current
            total = body["pagination"]["total_results"] if total is None else total
            for resource in body["resources"]:
                guid = resource["guid"]
                if guid in seen:
                    raise UpstreamError(f"cloud controller: security group {guid} is listed twice")
                seen.add(guid)
                resources.append(resource)
            if body["pagination"]["next"] is None or not body["resources"]:
                break
            page += 1
        if len(resources) != total:
            raise UpstreamError(
                f"cloud controller: listing has {len(resources)} security groups but announced {total}"
            )
        return resources, page, expected

    def _page(self, page: int) -> dict[str, Any]:
        path = f"{GROUPS_PATH}?per_page={self.page_size}&page={page}"
        body: dict[str, Any] = self._authorized(self._api, path, schema=_PAGE, accept=(200,)).body
        return body

    def _authorized(self, http: JsonHttp, path: str, *, schema: Any, accept: tuple[int, ...]) -> Reply:
        endpoint = path.split("?", 1)[0]
        for fresh in (False, True):
            headers = {"Authorization": f"bearer {self._tokens.token()}", "Accept": "application/json"}
            reply = http.request("GET", path, schema=schema, endpoint=endpoint, accept=(*accept, 401),
                                 headers=headers)
            if reply.status != 401:
                return reply
            self._tokens.invalidate()
            if fresh:
                break
        raise UpstreamError(f"cloud controller: GET {endpoint}: HTTP 401: token refused twice")
