"""The fleet view round-trips through its JSON, and its published schema is the one the code validates with."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dynamic_asgs.errors import ValidationError
from dynamic_asgs.fleet.report import ContainerCounts
from dynamic_asgs.fleet.view import (
    CellState,
    CellStatus,
    ContainerTotals,
    DenialRise,
    Enforcement,
    FleetTotals,
    FleetView,
)

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 1, 12, 0, 30, 250000, tzinfo=UTC)


def view(**changes: object) -> FleetView:
    base = FleetView(
        generated_at=T1, dataset_version=7, current_since=T0, silent_after_intervals=3,
        totals=FleetTotals(cells={CellState.CURRENT: 1, CellState.CATCHING_UP: 1, CellState.SILENT: 0,
                                  CellState.FAILED: 0},
                           containers=ContainerTotals(5, 2, 0, 1, 0), oldest_lag_seconds=30.25),
        cells=(CellStatus("c-1", "diego-cell/0", CellState.CURRENT, None, 7, ContainerCounts(3, 0, 0, 1), T1, 60.0),
               CellStatus("c-2", "diego-cell/1", CellState.CATCHING_UP, T0, 6, ContainerCounts(2, 2, 0, 0), T1, 60.0)),
        app="app-1", space=None,
        enforcement=(Enforcement("c-2", "diego-cell/1", CellState.CATCHING_UP, "app-1", "space-1", 6, 2),),
        denials_rose=(DenialRise("app-1", "space-1", "c-1", "diego-cell/0", 7, 12, T1),),
    )
    return FleetView(**{**{f: getattr(base, f) for f in FleetView.__dataclass_fields__}, **changes})  # type: ignore[arg-type]


def test_a_view_round_trips_through_its_json() -> None:
    for v in (view(), view(app=None, enforcement=(), denials_rose=())):
        assert FleetView.from_json(json.loads(json.dumps(v.to_json()))) == v


def test_converged_means_every_reporting_cell_is_current() -> None:
    assert not view().converged
    done = FleetTotals(cells={CellState.CURRENT: 2, CellState.CATCHING_UP: 0, CellState.SILENT: 1,
                              CellState.FAILED: 0}, containers=ContainerTotals(), oldest_lag_seconds=0)
    assert view(totals=done).converged
    nobody = FleetTotals(cells={CellState.CURRENT: 0, CellState.CATCHING_UP: 0, CellState.SILENT: 2,
                                CellState.FAILED: 0}, containers=ContainerTotals(), oldest_lag_seconds=0)
    assert not view(totals=nobody).converged


def test_a_view_the_schema_refuses_is_named() -> None:
    raw = view().to_json()
    raw["cells"][1]["state"] = "sleeping"
    with pytest.raises(ValidationError, match=r"fleet view\.cells\[1\]\.state"):
        FleetView.from_json(raw)


def test_the_published_schema_is_the_packaged_one() -> None:
    shipped = ROOT / "src" / "dynamic_asgs" / "fleet" / "schemas" / "fleet_view.json"
    assert json.loads((ROOT / "docs" / "fleet-view.schema.json").read_text()) == json.loads(shipped.read_text())
