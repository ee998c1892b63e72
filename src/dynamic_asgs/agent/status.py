"""The ``/asg-status`` document: one frozen dataclass tree, written by the agent, read by the audit.

Goals and the mechanism serving each:

* **One contract, one type** — the agent's debug endpoint serves :meth:`AgentStatus.to_json`;
  ``dynamic-asgs audit`` and ``dynamic-asgs local status`` read documents with
  :meth:`AgentStatus.from_json`. Its JSON Schema is published as ``docs/asg-status.schema.json``
  (a unit test validates the agent's real output against it).
* **Refused, not guessed** — :meth:`~AgentStatus.from_json` checks every key and type and
  raises :class:`~dynamic_asgs.errors.DocumentError` naming the path of the first bad value;
  keys it does not know are ignored, so a newer agent that adds some is still read.
* **Stable bytes** — ``to_json`` writes the keys in the order, and the timestamps in the form
  (``2023-11-14T22:13:20.123Z``: UTC, milliseconds truncated), the agent has always written;
  ``from_json`` then ``to_json`` gives the same document.

An agent with ``enable_asg_syncing: false`` serves :class:`DisabledStatus` instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from dynamic_asgs.errors import DocumentError

__all__ = [
    "AgentStatus",
    "ContainerStatus",
    "CycleSummary",
    "DisabledStatus",
    "Drift",
    "DriftEvent",
    "LastCycle",
    "PolicyServerStatus",
    "StatusDocument",
    "StoreStatus",
    "Totals",
    "format_instant",
    "instant",
    "parse_instant",
]

_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def instant(ts: float) -> datetime:
    """UNIX time ``ts`` as a UTC datetime, truncated to the millisecond (as the document shows it)."""
    return datetime(*time.gmtime(ts)[:6], int(ts % 1 * 1000) * 1000, tzinfo=UTC)


def format_instant(at: datetime | None) -> str | None:
    """``2023-11-14T22:13:20.123Z`` (None stays None)."""
    if at is None:
        return None
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{at.microsecond // 1000:03d}Z"


def parse_instant(text: str) -> datetime:
    """The inverse of :func:`format_instant`; raises :class:`DocumentError` for any other form."""
    try:
        if _INSTANT.fullmatch(text):
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:  # the form, but no such date (month 13)
        pass
    raise DocumentError(f"expected a UTC time like 2023-11-14T22:13:20.123Z, got {text[:40]!r}")


class _Object:
    """A JSON object being read; ``path`` names it in errors (``containers.h1``)."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise DocumentError(f"{path}: expected an object, got {type(value).__name__}")
        self._value, self._path = value, path

    def has(self, key: str) -> bool:
        """Whether the object holds ``key`` (for keys newer agents add)."""
        return key in self._value

    def _get(self, key: str) -> object:
        if key not in self._value:
            raise DocumentError(f"{self._at(key)}: missing")
        return self._value[key]

    def _at(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path != "document" else key

    def _bad(self, key: str, what: str, value: object) -> DocumentError:
        return DocumentError(f"{self._at(key)}: expected {what}, got {value!r}"[:300])

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer", value)
        return value

    def opt_integer(self, key: str) -> int | None:
        return None if self._get(key) is None else self.integer(key)

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number", value)
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string", value)
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self._get(key) is None else self.text(key)

    def instant_at(self, key: str) -> datetime:
        try:
            return parse_instant(self.text(key))
        except DocumentError as exc:
            raise DocumentError(f"{self._at(key)}: {exc}") from None

    def opt_instant(self, key: str) -> datetime | None:
        return None if self._get(key) is None else self.instant_at(key)

    def child(self, key: str) -> _Object:
        return _Object(self._get(key), self._at(key))

    def opt_child(self, key: str) -> _Object | None:
        return None if self._get(key) is None else self.child(key)

    def names(self) -> list[str]:
        return [str(k) for k in self._value]

    def texts(self, key: str) -> dict[str, str]:
        """An object whose values are all strings."""
        inner = self.child(key)
        return {k: inner.text(k) for k in inner.names()}

    def integers(self, key: str) -> dict[str, int]:
        """An object whose values are all integers."""
        inner = self.child(key)
        return {k: inner.integer(k) for k in inner.names()}

    def text_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings", value)
        return tuple(value)


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    """What one container enforces: its ruleset per family and which dataset version, since when.

    ``app_guid``, ``space_guid`` and ``workload`` are None when the container's chains are
    enforced but its store entry is gone (its chains go at the next sweep).
    """

    app_guid: str | None
    space_guid: str | None
    workload: str | None
    ruleset: Mapping[str, str]  # "ipv4" / "ipv6" -> digest of the chains enforced
    rule_count: int
    applied_at: datetime
    verified_at: datetime | None  # last whole-table read that found the chains as written
    dataset_version: int | None  # None: enforced, but no version recorded yet (never planned by this process)
    enforcing_since: datetime | None
    #: Packets its final REJECT refused since the agent first read its counter (denied egress).
    denied_packets: int = 0
    #: When its denials started or jumped after its rules last changed (None: they did not).
    denials_rose_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The container's entry of ``containers``."""
        return {
            "app_guid": self.app_guid, "space_guid": self.space_guid, "workload": self.workload,
            "ruleset": dict(self.ruleset), "rule_count": self.rule_count,
            "applied_at": format_instant(self.applied_at), "verified_at": format_instant(self.verified_at),
            "dataset_version": self.dataset_version, "enforcing_since": format_instant(self.enforcing_since),
            "denied_packets": self.denied_packets, "denials_rose_at": format_instant(self.denials_rose_at),
        }

    @classmethod
    def _read(cls, o: _Object) -> ContainerStatus:
        return cls(app_guid=o.opt_text("app_guid"), space_guid=o.opt_text("space_guid"),
                   workload=o.opt_text("workload"), ruleset=o.texts("ruleset"), rule_count=o.integer("rule_count"),
                   applied_at=o.instant_at("applied_at"),
                   verified_at=o.opt_instant("verified_at"), dataset_version=o.opt_integer("dataset_version"),
                   enforcing_since=o.opt_instant("enforcing_since"),
                   denied_packets=o.integer("denied_packets") if o.has("denied_packets") else 0,
                   denials_rose_at=o.opt_instant("denials_rose_at") if o.has("denials_rose_at") else None)


@dataclass(frozen=True, slots=True)
class Totals:
    """Cell totals: enforced containers, accept rules, those lagging, store entries (valid and not)."""

    containers: int
    rules: int
    lagging: int
    store_entries: int
    invalid_store_entries: int

    def to_json(self) -> dict[str, Any]:
        """The ``totals`` object."""
        return {"containers": self.containers, "rules": self.rules, "lagging": self.lagging,
                "store_entries": self.store_entries, "invalid_store_entries": self.invalid_store_entries}

    @classmethod
    def _read(cls, o: _Object) -> Totals:
        return cls(containers=o.integer("containers"), rules=o.integer("rules"), lagging=o.integer("lagging"),
                   store_entries=o.integer("store_entries"), invalid_store_entries=o.integer("invalid_store_entries"))


@dataclass(frozen=True, slots=True)
class CycleSummary:
    """What the dataplane did in a cycle (its report's summary, the counts of the cycle's log line)."""

    kind: str
    changed: int
    adopted: int
    unchanged: int
    skipped: int
    failed: int
    deleted: int
    closed: int
    deferred: int
    refused: int
    drifted: int
    commits: int
    payload_lines: Mapping[str, int]  # per family ("4", "6")
    restores: Mapping[str, int]
    reread: bool
    duration_seconds: float

    _COUNTS = ("changed", "adopted", "unchanged", "skipped", "failed", "deleted", "closed", "deferred", "refused",
               "drifted", "commits")

    def to_json(self) -> dict[str, Any]:
        """The ``last_cycle.report`` object."""
        return {"kind": self.kind, **{k: getattr(self, k) for k in self._COUNTS},
                "payload_lines": dict(self.payload_lines), "restores": dict(self.restores), "reread": self.reread,
                "duration_seconds": self.duration_seconds}

    @classmethod
    def from_json(cls, doc: object) -> CycleSummary:
        """A summary from its JSON form (the dataplane report's ``summary()``)."""
        return cls._read(_Object(doc, "report"))

    @classmethod
    def _read(cls, o: _Object) -> CycleSummary:
        counts = {k: o.integer(k) for k in cls._COUNTS}
        return cls(kind=o.text("kind"), **counts, payload_lines=o.integers("payload_lines"),
                   restores=o.integers("restores"), reread=o.boolean("reread"),
                   duration_seconds=o.number("duration_seconds"))


@dataclass(frozen=True, slots=True)
class LastCycle:
    """The last full cycle: its kind, end, duration, error, the dataplane's summary and per-container reasons.

    ``report`` is None when nothing could be planned (``error`` says why); ``error`` is
    ``"see failed"`` when the dataplane ran but some container or family failed.
    """

    kind: str
    finished_at: datetime
    duration_seconds: float
    error: str | None
    report: CycleSummary | None
    failed: Mapping[str, str]
    skipped: Mapping[str, str]
    refused: Mapping[str, str]
    drifted: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        """The ``last_cycle`` object."""
        return {"kind": self.kind, "finished_at": format_instant(self.finished_at),
                "duration_seconds": self.duration_seconds, "error": self.error,
                "report": self.report.to_json() if self.report else None, "failed": dict(self.failed),
                "skipped": dict(self.skipped), "refused": dict(self.refused), "drifted": dict(self.drifted)}

    @classmethod
    def _read(cls, o: _Object) -> LastCycle:
        report = o.opt_child("report")
        return cls(kind=o.text("kind"), finished_at=o.instant_at("finished_at"),
                   duration_seconds=o.number("duration_seconds"),
                   error=o.opt_text("error"), report=CycleSummary._read(report) if report else None,
                   failed=o.texts("failed"), skipped=o.texts("skipped"), refused=o.texts("refused"),
                   drifted=o.texts("drifted"))


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """A container whose chains were found edited behind the agent's back (and rewritten)."""

    handle: str
    reason: str
    at: datetime

    def to_json(self) -> dict[str, Any]:
        """The ``drift.last`` object."""
        return {"handle": self.handle, "reason": self.reason, "at": format_instant(self.at)}

    @classmethod
    def _read(cls, o: _Object) -> DriftEvent:
        return cls(handle=o.text("handle"), reason=o.text("reason"), at=o.instant_at("at"))


@dataclass(frozen=True, slots=True)
class Drift:
    """Drift repaired by this process: how many containers, and the last one."""

    repaired: int
    last: DriftEvent | None

    def to_json(self) -> dict[str, Any]:
        """The ``drift`` object."""
        return {"repaired": self.repaired, "last": self.last.to_json() if self.last else None}

    @classmethod
    def _read(cls, o: _Object) -> Drift:
        last = o.opt_child("last")
        return cls(repaired=o.integer("repaired"), last=DriftEvent._read(last) if last else None)


@dataclass(frozen=True, slots=True)
class PolicyServerStatus:
    """The policy server as the agent sees it: the current error, the last success, the spaces it refuses."""

    error: str | None
    last_success: datetime | None
    refused_spaces: Mapping[str, str]  # space guid -> the server's answer

    def to_json(self) -> dict[str, Any]:
        """The ``policy_server`` object."""
        return {"error": self.error, "last_success": format_instant(self.last_success),
                "refused_spaces": dict(self.refused_spaces)}

    @classmethod
    def _read(cls, o: _Object) -> PolicyServerStatus:
        return cls(error=o.opt_text("error"), last_success=o.opt_instant("last_success"),
                   refused_spaces=o.texts("refused_spaces"))


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The container metadata store: why it could not be read last time (None: it could)."""

    error: str | None

    def to_json(self) -> dict[str, Any]:
        """The ``store`` object."""
        return {"error": self.error}

    @classmethod
    def _read(cls, o: _Object) -> StoreStatus:
        return cls(error=o.opt_text("error"))


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What ``/asg-status`` shows: per container, cell totals, the last cycle, drift, peers' health.

    ``last_cycle`` is None until the first full cycle ends (the document shows ``{}``).
    """

    dataset_version: int | None  # the policy server's dataset version this agent last fetched
    dataset_changed_at: datetime | None
    containers: Mapping[str, ContainerStatus]  # by handle, sorted
    totals: Totals
    last_cycle: LastCycle | None
    drift: Drift
    settling: tuple[str, ...]  # containers waiting for their CNI or watched after a write, sorted
    policy_server: PolicyServerStatus
    store: StoreStatus

    def to_json(self) -> dict[str, Any]:
        """The document (``json.dumps`` it)."""
        return {
            "dataset_version": self.dataset_version, "dataset_changed_at": format_instant(self.dataset_changed_at),
            "containers": {h: c.to_json() for h, c in self.containers.items()},
            "totals": self.totals.to_json(), "last_cycle": self.last_cycle.to_json() if self.last_cycle else {},
            "drift": self.drift.to_json(), "settling": list(self.settling),
            "policy_server": self.policy_server.to_json(), "store": self.store.to_json(),
        }

    @classmethod
    def from_json(cls, doc: object) -> AgentStatus:
        """Read a document; raises :class:`DocumentError` naming the first bad value's path."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("containers"), Mapping):
            raise DocumentError("not an /asg-status document (no 'containers' object)")
        o = _Object(doc, "document")
        containers = o.child("containers")
        last = o.child("last_cycle")
        return cls(
            dataset_version=o.opt_integer("dataset_version"), dataset_changed_at=o.opt_instant("dataset_changed_at"),
            containers={h: ContainerStatus._read(containers.child(h)) for h in containers.names()},
            totals=Totals._read(o.child("totals")), last_cycle=LastCycle._read(last) if last.names() else None,
            drift=Drift._read(o.child("drift")), settling=o.text_list("settling"),
            policy_server=PolicyServerStatus._read(o.child("policy_server")), store=StoreStatus._read(o.child("store")),
        )


@dataclass(frozen=True, slots=True)
class DisabledStatus:
    """What ``/asg-status`` shows when ASG syncing is disabled (the agent touches no iptables)."""

    enable_asg_syncing: Literal[False] = False

    def to_json(self) -> dict[str, Any]:
        """The document."""
        return {"enable_asg_syncing": False}


#: What an agent's ``/asg-status`` serves.
StatusDocument = AgentStatus | DisabledStatus
