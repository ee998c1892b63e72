"""The fleet audit's verdicts, its wait and its table, from fleet views."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from test_view import T0, T1, view

from dynamic_asgs.fleet.view import CellState, Enforcement, FleetTotals, FleetView
from dynamic_asgs.fleet.view import ContainerTotals as Totals
from dynamic_asgs.tools.fleet_audit import (
    EXIT_LAGGING,
    EXIT_OK,
    EXIT_SILENT,
    exit_code,
    render,
    settled,
    wait_for_current,
)


def cells(current: int = 0, catching_up: int = 0, silent: int = 0, failed: int = 0) -> FleetTotals:
    return FleetTotals(cells={CellState.CURRENT: current, CellState.CATCHING_UP: catching_up,
                              CellState.SILENT: silent, CellState.FAILED: failed},
                       containers=Totals(), oldest_lag_seconds=0)


def test_exit_codes_say_current_catching_up_or_silent() -> None:
    done = view(totals=cells(current=2), enforcement=())
    assert exit_code(done) == EXIT_OK
    assert exit_code(view(totals=cells(current=1, catching_up=1))) == EXIT_LAGGING
    assert exit_code(view(totals=cells(current=1, failed=1))) == EXIT_LAGGING
    assert exit_code(view(totals=cells(current=1, silent=1), enforcement=())) == EXIT_SILENT
    assert exit_code(view(totals=cells(silent=2))) == EXIT_LAGGING  # nobody reports: nothing is known current


def test_an_instance_behind_keeps_a_filtered_audit_unsettled_unless_its_cell_is_silent() -> None:
    behind = Enforcement("c-2", "diego-cell/1", CellState.CURRENT, "app-1", "space-1", 6, 2)
    assert not settled(view(totals=cells(current=2), enforcement=(behind,)))
    silent = dataclasses.replace(behind, cell_state=CellState.SILENT)
    assert settled(view(totals=cells(current=1, silent=1), enforcement=(silent,)))


def test_since_waits_for_a_dataset_newer_than_the_change() -> None:
    done = view(totals=cells(current=2), enforcement=())
    assert settled(done, since=T0) and not settled(done, since=T0 + timedelta(seconds=1))
    assert exit_code(done, since=T1) == EXIT_LAGGING


def test_the_wait_asks_until_settled_or_the_timeout() -> None:
    views = [view(), view(), view(totals=cells(current=2), enforcement=())]
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    got = wait_for_current(lambda: views.pop(0), timeout=60, poll=2, clock=lambda: now[0], sleep=sleep)
    assert got.converged and slept == [2, 2]
    stuck: list[FleetView] = []
    got = wait_for_current(lambda: (stuck.append(view()) or stuck[-1]), timeout=5, poll=2, clock=lambda: now[0],
                           sleep=sleep)
    assert not got.converged and len(stuck) == 4  # at 0, 2, 4 and 5 s (the last at the deadline)


def test_the_table_names_cells_states_instances_and_denial_rises() -> None:
    text = render(view())
    assert "policy server dataset version 7, current since 2026-03-01T12:00:00.000000Z (30.2s ago)" in text
    rows = [line.split() for line in text.splitlines()]
    assert ["diego-cell/1", "catching-up", "30.2s", "ago", "6", "2", "2", "0", "0"] in [r[:9] for r in rows]
    assert "instances of app app-1:" in text and "BEHIND" in text
    assert "apps whose refused egress rose after their security groups changed:" in text
    assert "app-1  space-1  diego-cell/0  7         12" in text
