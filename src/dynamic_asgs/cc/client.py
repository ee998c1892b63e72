"""Cloud Controller: "did the ASGs change?" and a consistent, bounded listing of all of them.

* :meth:`CloudController.last_update` is one request to ``/internal/v4/asg_latest_update``
  on CC's mutual-TLS port. Its value, normalised to UTC with nanoseconds, is what the
  syncer compares between polls. An old CC without the endpoint (404) yields ``None``:
  every poll then lists.
* :meth:`CloudController.security_groups` pages through ``/v3/security_groups`` and
  re-reads ``last_update`` after every page (DESIGN.md §3.1). If it moved, the listing
  started over; after ``restarts`` tries it raises :class:`UnstableListing`.
* Pages are requested by number on the configured CC URL, as the Go syncer does;
  ``next.href`` is never followed, wherever it points. CC builds it from its external
  domain (``api.<system domain>`` in cf-deployment, while the syncer is configured with
  ``cloud-controller-ng.service.cf.internal:9024``), so refusing an off-origin href would
  refuse every real listing of more than one page; following it would let CC's answer
  choose where the token goes. It only says whether, and which, page comes next.
* A listing must add up, and stay inside :class:`Limits` (issue 13): a listing that
  announces more than ``max_pages`` pages is refused before page 2; every page must repeat
  page 1's totals, hold at most ``per_page`` groups, and name the following page as its
  ``next`` (never past the announced last page); every guid must come once and
  ``total_results`` groups in all. Each page is read up to ``max_response_bytes``; the
  whole listing, every attempt and request (token included) within it, ends by
  ``deadline``. A broken bound raises :class:`~dynamic_asgs.errors.RefusedAnswer` (a
  redirect does too, see :mod:`dynamic_asgs.http.client`), so a torn, endless or hostile
  listing never reaches the DB.
* Each resource is returned as CC sent it; whether it can be stored is the syncer's
  business (:mod:`dynamic_asgs.syncer.convert` drops a bad group alone).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dynamic_asgs.cc.uaa import TokenSource
from dynamic_asgs.config import load_schema
from dynamic_asgs.errors import Refusal, RefusedAnswer, UnstableListing, UpstreamError
from dynamic_asgs.http.client import JsonHttp, Reply, public_url, validator
from dynamic_asgs.http.deadline import Deadline

__all__ = ["CloudController", "Limits", "Listing", "normalize_timestamp"]

_LATEST = validator(load_schema("dynamic_asgs.cc", "schemas/asg_latest_update.json"))
_PAGE = validator(load_schema("dynamic_asgs.cc", "schemas/security_groups_page.json"))
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})$"
)
LATEST_PATH = "/internal/v4/asg_latest_update"
GROUPS_PATH = "/v3/security_groups"
#: A ``last_update`` answer is one timestamp.
_LATEST_BYTES = 64 * 1024


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


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one listing; the defaults leave a 10,000-group foundation far inside them.

    * ``max_pages`` 20: at 5000 groups per page (the default ``page_size``, CC's maximum)
      10,000 groups are 2 pages and 20 pages hold 100,000. Raise it with a smaller page size.
    * ``max_response_bytes`` 64 MiB per page: room for a full page of 5000 groups with
      tens of rules and a hundred bound spaces each, in CC's pretty-printed JSON.
    * ``deadline`` 300 s for a listing, its restarts included: 10,000 groups are 2 pages
      and 3 ``last_update`` reads per attempt, at most 3 attempts; even at 30 s per page
      that is 180 s. A single ``last_update`` check gets the same deadline.
    """

    max_pages: int = 20
    max_response_bytes: int = 64 * 1024 * 1024
    deadline: float = 300.0


@dataclass
class _Paging:
    """One listing attempt's pages, checked against what page 1 announced."""

    page_size: int
    max_pages: int
    url: str
    totals: tuple[Any, Any] | None = None
    last_page: int = 0
    count: int = 0
    seen: set[str] = field(default_factory=set)

    def check(self, number: int, body: dict[str, Any]) -> bool:
        """Check page ``number`` (refusing an inconsistent one); whether another page follows."""
        pagination, resources = body["pagination"], body["resources"]
        totals = (pagination["total_results"], pagination.get("total_pages"))
        if self.totals is None:
            self._announce(*totals)
        elif totals != self.totals:
            raise self._refuse(f"page {number} announces {_totals(totals)}, page 1 announced {_totals(self.totals)}")
        if len(resources) > self.page_size:
            raise self._refuse(f"page {number} has {len(resources)} security groups; {self.page_size} were asked for")
        self._count(resources)
        follows = pagination["next"] is not None
        if follows:
            self._next(number, pagination["next"]["href"], bool(resources))
        return follows

    def finish(self) -> None:
        """The whole attempt: as many groups as announced."""
        announced = self.totals[0] if self.totals is not None else 0
        if self.count != announced:
            raise self._refuse(f"listing has {self.count} security groups but announced {announced}")

    def _announce(self, results: int, pages: int | None) -> None:
        self.totals = (results, pages)
        if pages is not None and pages * self.page_size < results:
            raise self._refuse(f"{_totals(self.totals)} do not fit pages of {self.page_size}")
        self.last_page = max(1, pages if pages is not None else -(-results // self.page_size))
        if self.last_page > self.max_pages:
            raise RefusedAnswer(
                f"cloud controller: GET {GROUPS_PATH}: the listing announces {self.last_page} pages of "
                f"{self.page_size}; at most {self.max_pages} are read", reason=Refusal.PAGES, url=self.url,
                limit=self.max_pages)

    def _count(self, resources: Sequence[Any]) -> None:
        self.count += len(resources)
        for resource in resources:
            guid = resource.get("guid") if isinstance(resource, dict) else None
            if isinstance(guid, str):
                if guid in self.seen:
                    raise self._refuse(f"security group {guid[:80]!r} is listed twice")
                self.seen.add(guid)

    def _next(self, number: int, href: str, filled: bool) -> None:
        if number >= self.last_page:
            raise self._refuse(f"page {number} points to a next page past the announced last page {self.last_page}")
        if not filled:
            raise self._refuse(f"page {number} is empty but points to a next page")
        try:
            pages = parse_qs(urlsplit(href).query).get("page")
        except ValueError:
            pages = None
        if pages != [str(number + 1)]:
            raise self._refuse(f"page {number} names {public_url(href)!r} as the next page, not page {number + 1}")

    def _refuse(self, message: str) -> RefusedAnswer:
        return RefusedAnswer(f"cloud controller: GET {GROUPS_PATH}: inconsistent pages: {message}",
                             reason=Refusal.PAGING, url=self.url)


def _totals(totals: tuple[Any, Any]) -> str:
    results, pages = totals
    return f"{results} results" + ("" if pages is None else f" in {pages} pages")


class CloudController:
    """Reads security groups from CC's v3 API (``api``) and its internal mTLS API (``internal``)."""

    def __init__(
        self, *, api: JsonHttp, internal: JsonHttp, tokens: TokenSource, page_size: int = 5000, restarts: int = 3,
        limits: Limits = Limits(),
    ) -> None:
        self._api = api
        self._internal = internal
        self._tokens = tokens
        self.page_size = page_size
        self.restarts = restarts
        self.limits = limits

    def last_update(self) -> str | None:
        """CC's ``last_update`` (normalised), or ``None`` when CC lacks the endpoint."""
        return self._latest(Deadline.after(self.limits.deadline))

    def _latest(self, deadline: Deadline) -> str | None:
        reply = self._authorized(self._internal, LATEST_PATH, schema=_LATEST, accept=(200, 404),
                                 max_bytes=_LATEST_BYTES, deadline=deadline)
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
        deadline = Deadline.after(self.limits.deadline)
        expected = last_update if last_update is not None else self._latest(deadline)
        for attempt in range(1, self.restarts + 1):
            resources, pages, current = self._pages(expected, deadline)
            if current == expected:
                return Listing(resources, expected, pages, attempt)
            expected = current
        raise UnstableListing(
            f"cloud controller: security groups changed while being listed ({self.restarts} attempts); "
            "keeping the stored data"
        )

    def _pages(self, expected: str | None, deadline: Deadline) -> tuple[list[dict[str, Any]], int, str | None]:
        """Page through the listing; stop early (returning the new value) if last_update moves."""
        paging = _Paging(self.page_size, self.limits.max_pages, public_url(self._api.base_url + GROUPS_PATH))
        resources: list[dict[str, Any]] = []
        number = 1
        while True:
            body = self._page(number, deadline)
            current = self._latest(deadline) if expected is not None else None
            if current != expected:
                return [], number, current
            follows = paging.check(number, body)
            resources.extend(body["resources"])
            if not follows:
                break
            number += 1
        paging.finish()
        return resources, number, expected

    def _page(self, page: int, deadline: Deadline) -> dict[str, Any]:
        path = f"{GROUPS_PATH}?per_page={self.page_size}&page={page}"
        body: dict[str, Any] = self._authorized(self._api, path, schema=_PAGE, accept=(200,),
                                                max_bytes=self.limits.max_response_bytes, deadline=deadline).body
        return body

    def _authorized(self, http: JsonHttp, path: str, *, schema: Any, accept: tuple[int, ...], max_bytes: int,
                    deadline: Deadline) -> Reply:
        endpoint = path.split("?", 1)[0]
        for fresh in (False, True):
            token = self._tokens.token(deadline=deadline)
            headers = {"Authorization": f"bearer {token}", "Accept": "application/json"}
            reply = http.request("GET", path, schema=schema, endpoint=endpoint, accept=(*accept, 401),
                                 headers=headers, max_bytes=max_bytes, deadline=deadline)
            if reply.status != 401:
                return reply
            self._tokens.invalidate()
            if fresh:
                break
        raise UpstreamError(f"cloud controller: GET {endpoint}: HTTP 401: token refused twice")
