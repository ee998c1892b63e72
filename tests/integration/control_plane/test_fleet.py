"""The fleet audit against the real policy-server daemon over mutual TLS, on every DB backend.

Cells report through ``PUT /cell-reports`` (answered by whichever worker takes the
connection, written in batches), the fleet view answers from the DB, a cell that stops
reporting turns silent, and the main process's fleet metrics count one convergence.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import requests

from dynamic_asgs.fleet.report import AppEnforcement, CellReport, ContainerCounts
from dynamic_asgs.fleet.view import CellState, FleetView
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from support.daemons import PolicyServer, database_config, free_port, start_policy_server, wait_for

REPORTS = "/networking/v1/internal/cell-reports"
FLEET = "/networking/v1/internal/fleet"


def put(server: PolicyServer, report: CellReport | bytes) -> requests.Response:
    body = report if isinstance(report, bytes) else report.to_bytes()
    return requests.put(server.url + REPORTS, data=body, verify=str(server.pki.ca.cert_path),
                        cert=server.client_cert(), timeout=10)


def fleet(server: PolicyServer, **params: str) -> FleetView:
    r = requests.get(server.url + FLEET, params=params, verify=str(server.pki.ca.cert_path),
                     cert=server.client_cert(), timeout=10)
    assert r.status_code == 200, r.text
    return FleetView.from_json(r.json())


def states(view: FleetView) -> dict[str, CellState]:
    return {c.id: c.state for c in view.cells}


def metric(port: int, name: str, **labels: str) -> float | None:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{wanted}}}" if wanted else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else None


def report(cell: str, version: int, *, interval: float = 60.0, apps: tuple[AppEnforcement, ...] = (),
           **counts: Any) -> CellReport:
    return CellReport(cell, f"diego-cell/{cell[-1]}", interval, version, ContainerCounts(**{"current": 3, **counts}),
                      apps=apps)


def test_cells_report_and_the_fleet_view_metrics_and_silence_follow(tmp_path: Path, db: DatabaseSettings) -> None:
    engine = create_engine(db)
    upgrade(engine)
    store = PolicyStore(engine)
    store.replace([GroupRow("g", "dns", "[]", True, True, (), ())], cc_last_update=None)
    metrics_port = free_port()
    server = start_policy_server(tmp_path, database_config(db), metrics_port=metrics_port,
                                 report_flush_interval_ms=200, silent_after_intervals=2)
    try:
        app = AppEnforcement("app-1", "space-1", 1, 2)
        answer = put(server, report("cell-1", 1, apps=(app,)))
        assert answer.status_code == 202 and answer.json() == {"silent_after_seconds": 120.0}
        assert put(server, report("cell-2", 0, lagging=1)).status_code == 202
        view = wait_for(lambda: len((v := fleet(server)).cells) == 2 and v, what="both cells in the view")
        assert states(view) == {"cell-1": CellState.CURRENT, "cell-2": CellState.CATCHING_UP}
        assert view.dataset_version == 1 and not view.converged
        by_app = fleet(server, app="app-1")
        assert [(e.cell_id, e.version, e.containers) for e in by_app.enforcement] == [("cell-1", 1, 2)]
        wait_for(lambda: metric(metrics_port, "fleet_cells", state="catching-up") == 1.0, what="fleet metrics")

        bad = put(server, b'{"cell": {"id": "x", "name": "y"}}')
        assert bad.status_code == 400 and bad.json()["error"].startswith("cell report")

        assert put(server, report("cell-2", 1)).status_code == 202
        wait_for(lambda: fleet(server).converged, what="the fleet to converge")
        wait_for(lambda: metric(metrics_port, "fleet_convergence_seconds_count") == 1.0, timeout=30,
                 what="one convergence observed")

        assert put(server, report("cell-3", 1, interval=0.5)).status_code == 202
        wait_for(lambda: states(fleet(server)).get("cell-3") == CellState.SILENT, what="cell-3 to turn silent")
        wait_for(lambda: metric(metrics_port, "fleet_cells", state="silent") == 1.0, timeout=30,
                 what="the silent cell in the metrics")
        assert metric(metrics_port, "fleet_convergence_seconds_count") == 1.0
        assert metric(metrics_port, "internal_requests_refused_total", reason="invalid-report") == 1.0
    finally:
        server.daemon.stop()
        engine.dispose()
