"""The CC stand-in's state: catalog, ``last_update``, tokens, fault switches and request counts.

Every field is guarded by one lock; handlers ask :meth:`StubState.take_fault` what to do
to a request (the counters of one-shot faults are decremented atomically, so "fail the
next 2 requests" fails exactly two).
"""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dynamic_asgs.errors import InputError
from dynamic_asgs.local.cc_stub.catalog import Catalog, GroupEntry, rfc3339

__all__ = ["Faults", "StubState", "cc_error"]

_FILTERS = ("guids", "names", "running_space_guids", "staging_space_guids",
            "globally_enabled_running", "globally_enabled_staging")


@dataclass
class Faults:
    """Fault switches. Counters (``*_next``, ``change_during_paging``) count down; -1 means always."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    fail_next: int = 0
    reset_next: int = 0
    malformed_next: int = 0
    change_during_paging: int = 0
    paths: list[str] = field(default_factory=lambda: ["/v3/", "/internal/"])

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a JSON object of changes; raise InputError on an unknown key or a wrong type."""
        known = {f.name: f for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise InputError(f"unknown fault {key!r} (known: {', '.join(sorted(known))})")
            current = getattr(self, key)
            ok = isinstance(value, list) if isinstance(current, list) else (
                isinstance(value, int | float) and not isinstance(value, bool))
            if not ok:
                raise InputError(f"fault {key!r}: wrong type {type(value).__name__}")
            setattr(self, key, type(current)(value) if not isinstance(current, list) else list(value))


def _take(count: int) -> tuple[bool, int]:
    if count == 0:
        return False, 0
    return True, count if count < 0 else count - 1


def _matches(entry: GroupEntry, filters: Mapping[str, list[str]]) -> bool:
    checks: dict[str, Callable[[list[str]], bool]] = {
        "guids": lambda values: entry.guid in values,
        "names": lambda values: entry.name in values,
        "running_space_guids": lambda values: bool(entry.running_spaces.intersection(values)),
        "staging_space_guids": lambda values: bool(entry.staging_spaces.intersection(values)),
        "globally_enabled_running": lambda values: entry.running == (values[0] == "true"),
        "globally_enabled_staging": lambda values: entry.staging == (values[0] == "true"),
    }
    return all(checks[key](values) for key, values in filters.items())


class StubState:
    """Shared by the stand-in's servers and its file watcher."""

    def __init__(self, catalog: Catalog, *, client_id: str, client_secret: str, token_ttl: int) -> None:
        self._lock = threading.Lock()
        self.catalog = catalog
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.faults = Faults()
        self.stats: Counter[str] = Counter()
        self._tokens: dict[str, float] = {}
        self._last_ns = time.time_ns()
        self.last_update = rfc3339(self._last_ns)

    def bump(self) -> str:
        """Move ``last_update`` to now (strictly forward), as any CC write does."""
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            self.last_update = rfc3339(self._last_ns)
            return self.last_update

    def replace_catalog(self, catalog: Catalog) -> str:
        """Serve ``catalog`` from now on and bump ``last_update``."""
        with self._lock:
            self.catalog = catalog
        return self.bump()

    def count(self, path: str) -> None:
        with self._lock:
            self.stats[path] += 1

    def stats_snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.stats)
        cc = sum(n for path, n in counts.items() if path != "/oauth/token")
        return {"requests": counts, "cc_requests": cc, "last_update": self.last_update,
                "security_groups": len(self.catalog.groups)}

    def reset(self) -> None:
        """Clear request counts and fault switches."""
        with self._lock:
            self.stats.clear()
            self.faults = Faults()

    def set_faults(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.faults.update(changes)
            return asdict(self.faults)

    def faults_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self.faults)

    def take_fault(self, path: str) -> tuple[float, str | None]:
        """For a request to ``path``: (latency seconds, action: None/"reset"/"fail"/"malformed")."""
        with self._lock:
            f = self.faults
            if not any(path.startswith(prefix) for prefix in f.paths):
                return 0.0, None
            latency = f.latency_ms / 1000
            hit, f.reset_next = _take(f.reset_next)
            if hit:
                return latency, "reset"
            hit, f.fail_next = _take(f.fail_next)
            if hit or (f.error_rate > 0 and random.random() < f.error_rate):
                return latency, "fail"
            hit, f.malformed_next = _take(f.malformed_next)
            return latency, "malformed" if hit else None

    def after_page(self) -> None:
        """Called after serving a listing page: the change-during-paging fault bumps last_update."""
        with self._lock:
            hit, self.faults.change_during_paging = _take(self.faults.change_during_paging)
        if hit:
            self.bump()

    def issue_token(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + self.token_ttl
        return {"access_token": token, "token_type": "bearer", "expires_in": self.token_ttl,
                "scope": "cloud_controller.admin_read_only", "jti": secrets.token_hex(8)}

    def revoke_tokens(self) -> None:
        """Forget every issued token (CC then answers 401 until a new one is fetched)."""
        with self._lock:
            self._tokens.clear()

    def token_valid(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("bearer "):
            return False
        token = header[7:].strip()
        with self._lock:
            return self._tokens.get(token, 0.0) > time.monotonic()

    def listing(self, params: Mapping[str, list[str]], base_url: str) -> tuple[int, bytes]:
        """One page of ``/v3/security_groups`` for the query ``params`` (CC's paging and filters)."""
        try:
            page = int(params.get("page", ["1"])[0])
            per_page = int(params.get("per_page", ["50"])[0])
        except ValueError:
            return 400, cc_error("page and per_page must be integers", "CF-BadQueryParameter", 10005)
        if page < 1 or not 1 <= per_page <= 5000:
            return 400, cc_error("Per page must be between 1 and 5000", "CF-UnprocessableEntity", 10008)
        filters = {k: ",".join(v).split(",") for k, v in params.items() if k in _FILTERS}
        groups = [g for g in self.catalog.groups if _matches(g, filters)]
        total_pages = max(1, -(-len(groups) // per_page))
        chunk = groups[(page - 1) * per_page: page * per_page]

        def href(n: int) -> dict[str, str]:
            query = "".join(f"&{k}={','.join(v)}" for k, v in sorted(filters.items()))
            return {"href": f"{base_url}/v3/security_groups?page={n}&per_page={per_page}{query}"}

        pagination = {
            "total_results": len(groups), "total_pages": total_pages, "first": href(1), "last": href(total_pages),
            "next": href(page + 1) if page < total_pages else None,
            "previous": href(page - 1) if page > 1 else None,
        }
        body = (b'{"pagination":' + json.dumps(pagination, separators=(",", ":")).encode()
                + b',"resources":[' + b",".join(g.resource for g in chunk) + b"]}")
        return 200, body


def cc_error(detail: str, title: str, code: int) -> bytes:
    """A CC v3 error body."""
    return json.dumps({"errors": [{"detail": detail, "title": title, "code": code}]}).encode()
