"""The fleet view: what the policy server answers to ``GET /networking/v1/internal/fleet`` (issue 14).

One frozen type, produced by the policy server (computed from the cell reports in the
policy DB, so every instance answers for the whole fleet) and read by ``dynamic-asgs
audit --policy-server-url``, with :meth:`FleetView.to_json` and :meth:`FleetView.from_json`;
its JSON Schema ships as package data (``schemas/fleet_view.json``) and is published as
``docs/fleet-view.schema.json``.

A cell is in exactly one :class:`CellState`, judged in this order: ``silent`` (no report
for ``silent_after_intervals`` of its own intervals), ``failed`` (some container's rules
could not be written), ``catching-up`` (it enforces an older version than the current
one, or some containers still lag), else ``current``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from jsonschema import Draft202012Validator

from dynamic_asgs.config import load_schema
from dynamic_asgs.errors import ValidationError
from dynamic_asgs.fleet.report import ContainerCounts, format_time, parse_time

__all__ = ["FLEET_PATH", "CellState", "CellStatus", "ContainerTotals", "DenialRise", "Enforcement", "FleetTotals",
           "FleetView"]

#: Where the fleet view is read (``GET``, mutual TLS; ``app``/``space`` filter it).
FLEET_PATH = "/networking/v1/internal/fleet"
_VALIDATOR = Draft202012Validator(load_schema("dynamic_asgs.fleet", "schemas/fleet_view.json"))


class CellState(StrEnum):
    """Where a cell stands against the current dataset version."""

    CURRENT = "current"
    CATCHING_UP = "catching-up"
    SILENT = "silent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class CellStatus:
    """One cell: its state (and since when, for ``catching-up``), what it last reported and when."""

    id: str
    name: str
    state: CellState
    since: datetime | None
    dataset_version: int
    containers: ContainerCounts
    reported_at: datetime
    interval_seconds: float


@dataclass(frozen=True, slots=True)
class ContainerTotals:
    """Containers of the fleet by state; a silent cell's last reported containers count as ``silent``."""

    current: int = 0
    lagging: int = 0
    failed: int = 0
    drifted: int = 0
    silent: int = 0


@dataclass(frozen=True, slots=True)
class FleetTotals:
    """Cells by state, containers by state, and the longest a non-silent cell has been catching up."""

    cells: dict[CellState, int]
    containers: ContainerTotals
    oldest_lag_seconds: float


@dataclass(frozen=True, slots=True)
class Enforcement:
    """Which version one app's instances on one cell enforce (with ``app``/``space`` queries)."""

    cell_id: str
    cell_name: str
    cell_state: CellState
    app: str
    space: str
    version: int
    containers: int


@dataclass(frozen=True, slots=True)
class DenialRise:
    """An app whose denied egress rose on a cell after the change its containers enforce."""

    app: str
    space: str
    cell_id: str
    cell_name: str
    version: int
    denied_packets: int
    denials_rose_at: datetime


@dataclass(frozen=True, slots=True)
class FleetView:
    """The whole fleet against the current dataset version (see the module docstring)."""

    generated_at: datetime
    dataset_version: int
    current_since: datetime
    silent_after_intervals: int
    totals: FleetTotals
    cells: tuple[CellStatus, ...]
    app: str | None = None
    space: str | None = None
    enforcement: tuple[Enforcement, ...] = ()
    denials_rose: tuple[DenialRise, ...] = ()

    @property
    def converged(self) -> bool:
        """Whether some cell reports and every cell that reports is ``current``."""
        cells = self.totals.cells
        reporting = sum(n for state, n in cells.items() if state is not CellState.SILENT)
        return reporting > 0 and cells.get(CellState.CURRENT, 0) == reporting

    def to_json(self) -> dict[str, Any]:
        """The view as the JSON object the schema describes."""
        t = self.totals
        return {
            "generated_at": format_time(self.generated_at),
            "dataset": {"version": self.dataset_version, "current_since": format_time(self.current_since)},
            "silent_after_intervals": self.silent_after_intervals,
            "totals": {
                "cells": {state.value: t.cells.get(state, 0) for state in CellState},
                "containers": {"current": t.containers.current, "lagging": t.containers.lagging,
                               "failed": t.containers.failed, "drifted": t.containers.drifted,
                               "silent": t.containers.silent},
                "oldest_lag_seconds": t.oldest_lag_seconds,
            },
            "cells": [{
                "id": c.id, "name": c.name, "state": c.state.value, "since": format_time(c.since),
                "dataset_version": c.dataset_version,
                "containers": {"current": c.containers.current, "lagging": c.containers.lagging,
                               "failed": c.containers.failed, "drifted": c.containers.drifted},
                "reported_at": format_time(c.reported_at), "interval_seconds": c.interval_seconds,
            } for c in self.cells],
            "filter": {"app": self.app, "space": self.space},
            "enforcement": [{"cell_id": e.cell_id, "cell_name": e.cell_name, "cell_state": e.cell_state.value,
                             "app": e.app, "space": e.space, "version": e.version, "containers": e.containers}
                            for e in self.enforcement],
            "denials_rose": [{"app": d.app, "space": d.space, "cell_id": d.cell_id, "cell_name": d.cell_name,
                              "version": d.version, "denied_packets": d.denied_packets,
                              "denials_rose_at": format_time(d.denials_rose_at)} for d in self.denials_rose],
        }

    @classmethod
    def from_json(cls, raw: Any) -> FleetView:
        """Validate a decoded JSON value against the schema; :class:`ValidationError` names what is wrong."""
        error = next(iter(sorted(_VALIDATOR.iter_errors(raw), key=lambda e: list(e.absolute_path))), None)
        if error is not None:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise ValidationError(f"fleet view{where}: {error.message[:200]}")
        t = raw["totals"]
        return cls(
            generated_at=_time(raw["generated_at"]),
            dataset_version=raw["dataset"]["version"],
            current_since=_time(raw["dataset"]["current_since"]),
            silent_after_intervals=raw["silent_after_intervals"],
            totals=FleetTotals(cells={CellState(k): v for k, v in t["cells"].items()},
                               containers=ContainerTotals(**t["containers"]),
                               oldest_lag_seconds=float(t["oldest_lag_seconds"])),
            cells=tuple(CellStatus(c["id"], c["name"], CellState(c["state"]), parse_time(c["since"]),
                                   c["dataset_version"], ContainerCounts(**c["containers"]),
                                   _time(c["reported_at"]), float(c["interval_seconds"])) for c in raw["cells"]),
            app=raw["filter"]["app"], space=raw["filter"]["space"],
            enforcement=tuple(Enforcement(e["cell_id"], e["cell_name"], CellState(e["cell_state"]), e["app"],
                                          e["space"], e["version"], e["containers"]) for e in raw["enforcement"]),
            denials_rose=tuple(DenialRise(d["app"], d["space"], d["cell_id"], d["cell_name"], d["version"],
                                          d["denied_packets"], _time(d["denials_rose_at"]))
                               for d in raw["denials_rose"]),
        )


def _time(text: str) -> datetime:
    moment = parse_time(text)
    assert moment is not None  # the schema requires a time here
    return moment
