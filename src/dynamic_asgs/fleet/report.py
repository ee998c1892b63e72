"""The cell report: what one agent tells the policy server it enforces (issue 14).

One frozen type, imported by the producer (the agent) and the consumer (the policy
server), with :meth:`CellReport.to_json` and :meth:`CellReport.from_json`; its JSON Schema
ships as package data (``schemas/cell_report.json``) and is published as
``docs/cell-report.schema.json``. A report is compact: counts per state, and one entry
per app (policy group) on the cell, never one per container, so its size grows with the
apps a cell runs, and :data:`MAX_REPORT_BYTES` bounds what a server reads.

``from_json`` refuses, with :class:`~dynamic_asgs.errors.ValidationError` naming the
field, anything the schema refuses (every string has a grammar, every number a range),
so nothing a hostile peer sends reaches SQL or a log line unchecked. A policy server
validates every report of every cell, so a report is first checked by :func:`_conforms`,
a direct transcription of the schema that accepts only what the schema accepts; only a
report it does not accept goes through the (much slower) JSON Schema validator, which
names the field or, for the few values the transcription is stricter about, accepts it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jsonschema import Draft202012Validator

from dynamic_asgs.config import load_schema
from dynamic_asgs.errors import ValidationError

__all__ = ["MAX_REPORT_BYTES", "REPORTS_PATH", "AppEnforcement", "CellReport", "ContainerCounts", "format_time",
           "parse_time"]

#: Where agents send their reports (``PUT``, mutual TLS).
REPORTS_PATH = "/networking/v1/internal/cell-reports"
#: The largest report body a policy server reads (room for thousands of apps per cell).
MAX_REPORT_BYTES = 4 * 1024 * 1024

_SCHEMA = load_schema("dynamic_asgs.fleet", "schemas/cell_report.json")
_VALIDATOR = Draft202012Validator(_SCHEMA)
_DEFS = _SCHEMA["$defs"]
_GUID = re.compile(_DEFS["guid"]["pattern"].removeprefix("^").removesuffix("$"))
_CELL_NAME = re.compile(_SCHEMA["properties"]["cell"]["properties"]["name"]["pattern"].removeprefix("^")
                        .removesuffix("$"))
_TIME = re.compile(_DEFS["time"]["pattern"].removeprefix("^").removesuffix("$"))
_MAX = _DEFS["count"]["maximum"]
_MAX_APPS = _SCHEMA["properties"]["apps"]["maxItems"]
_REPORT_KEYS = frozenset(_SCHEMA["properties"])
_REQUIRED = frozenset(_SCHEMA["required"])
_APP_KEYS = frozenset(_SCHEMA["properties"]["apps"]["items"]["properties"])
_APP_REQUIRED = frozenset(_SCHEMA["properties"]["apps"]["items"]["required"])
_COUNT_KEYS = frozenset(_SCHEMA["properties"]["containers"]["required"])


def _int(value: Any, low: int) -> bool:
    return type(value) is int and low <= value <= _MAX


def _text(value: Any, grammar: re.Pattern[str], longest: int) -> bool:
    return type(value) is str and len(value) <= longest and grammar.fullmatch(value) is not None


def _time_or_null(value: Any) -> bool:
    return value is None or _text(value, _TIME, 40)


def _conforms(raw: Any) -> bool:
    """Whether ``raw`` is a report the schema accepts, checked directly (False: ask the schema)."""
    if type(raw) is not dict or not raw.keys() >= _REQUIRED or not raw.keys() <= _REPORT_KEYS:
        return False
    cell, counts, apps, interval = raw["cell"], raw["containers"], raw["apps"], raw["interval_seconds"]
    if (type(cell) is not dict or cell.keys() != {"id", "name"} or not _text(cell["id"], _GUID, 128)
            or not _text(cell["name"], _CELL_NAME, 255)):
        return False
    if type(interval) not in (int, float) or not 0 < interval <= 86400 or not _int(raw["dataset_version"], -1):
        return False
    if type(counts) is not dict or counts.keys() != _COUNT_KEYS or not all(_int(counts[k], 0) for k in _COUNT_KEYS):
        return False
    if not _time_or_null(raw.get("lagging_since")) or type(apps) is not list or len(apps) > _MAX_APPS:
        return False
    return all(
        type(app) is dict and _APP_REQUIRED <= app.keys() <= _APP_KEYS and _text(app["guid"], _GUID, 128)
        and (app["space"] == "" or _text(app["space"], _GUID, 128)) and _int(app["version"], -1)
        and _int(app["containers"], 0) and _int(app.get("denied_packets", 0), 0)
        and _time_or_null(app.get("denials_rose_at"))
        for app in apps)


def format_time(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with microseconds, as every fleet document writes times."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z") if moment else None


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time (validated by the schema) as an aware datetime."""
    if text is None:
        return None
    if "." in text:  # Python reads at most 6 fractional digits
        head, _, tail = text.partition(".")
        digits = len(tail) - len(tail.lstrip("0123456789"))
        text = f"{head}.{tail[:min(digits, 6)]}{tail[digits:]}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class ContainerCounts:
    """The cell's containers by state (see the schema for each state's meaning)."""

    current: int = 0
    lagging: int = 0
    failed: int = 0
    drifted: int = 0

    @property
    def total(self) -> int:
        """Containers with an ASG chain on the cell."""
        return self.current + self.lagging + self.failed


@dataclass(frozen=True, slots=True)
class AppEnforcement:
    """One app's containers on the cell: the lowest version they enforce, and their denied egress."""

    guid: str
    space: str
    version: int
    containers: int
    denied_packets: int = 0
    denials_rose_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CellReport:
    """What one cell's agent enforces (see the module docstring)."""

    cell_id: str
    cell_name: str
    interval_seconds: float
    dataset_version: int
    containers: ContainerCounts = field(default_factory=ContainerCounts)
    lagging_since: datetime | None = None
    apps: tuple[AppEnforcement, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The report as the JSON object the schema describes."""
        c = self.containers
        return {
            "cell": {"id": self.cell_id, "name": self.cell_name},
            "interval_seconds": self.interval_seconds,
            "dataset_version": self.dataset_version,
            "containers": {"current": c.current, "lagging": c.lagging, "failed": c.failed, "drifted": c.drifted},
            "lagging_since": format_time(self.lagging_since),
            "apps": [{"guid": a.guid, "space": a.space, "version": a.version, "containers": a.containers,
                      "denied_packets": a.denied_packets, "denials_rose_at": format_time(a.denials_rose_at)}
                     for a in self.apps],
        }

    def to_bytes(self) -> bytes:
        """The compact JSON body an agent sends."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: Any) -> CellReport:
        """Validate a decoded JSON value against the schema; :class:`ValidationError` names what is wrong."""
        error = None if _conforms(raw) else next(
            iter(sorted(_VALIDATOR.iter_errors(raw), key=lambda e: list(e.absolute_path))), None)
        if error is not None:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) or "."
            raise ValidationError(f"cell report{where if where != '.' else ''}: {error.message[:200]}")
        c = raw["containers"]
        return cls(
            cell_id=raw["cell"]["id"], cell_name=raw["cell"]["name"],
            interval_seconds=float(raw["interval_seconds"]), dataset_version=raw["dataset_version"],
            containers=ContainerCounts(c["current"], c["lagging"], c["failed"], c["drifted"]),
            lagging_since=parse_time(raw.get("lagging_since")),
            apps=tuple(AppEnforcement(a["guid"], a["space"], a["version"], a["containers"], a.get("denied_packets", 0),
                                      parse_time(a.get("denials_rose_at"))) for a in raw["apps"]),
        )

    @classmethod
    def from_bytes(cls, body: bytes) -> CellReport:
        """Decode and validate a report body of at most :data:`MAX_REPORT_BYTES`."""
        if len(body) > MAX_REPORT_BYTES:
            raise ValidationError(f"cell report: {len(body)} bytes is more than {MAX_REPORT_BYTES}")
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 and huge integers
            raise ValidationError(f"cell report: not JSON: {str(exc)[:120]}") from None
        return cls.from_json(raw)
