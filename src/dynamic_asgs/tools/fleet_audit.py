"""``dynamic-asgs audit --policy-server-url URL`` without ``--agent``: the fleet from the policy server alone.

Every agent reports to the policy server (issue 14), so one request answers for the whole
fleet: per cell and in total, which are current, which catch up and since when, which are
silent, which failed; with ``--app``/``--space``, which instances enforce which version; and
the apps whose denied egress rose after the last change.

``--wait-for current`` asks again every ``--poll`` seconds until every cell that reports is
current (for change pipelines), or ``--timeout`` passes. A change made in Cloud Controller
reaches the policy server only with the syncer's next poll: a pipeline passes ``--since`` the
time it made the change, and the audit also waits for a dataset that became current after it.

Exit status (docs/operations.md), as in the per-cell audit:

* 0: every cell that reports is current (with ``--app``/``--space``: every instance
  enforces the current version) and none is silent;
* 1: some cell is catching up or failed (with ``--wait-for``: still so at ``--timeout``);
* 3: every reporting cell is current, but some cell is silent (the answer is incomplete);
* 2: bad flags, or the policy server could not be asked.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from dynamic_asgs.fleet.report import format_time
from dynamic_asgs.fleet.view import CellState, FleetView

__all__ = ["EXIT_LAGGING", "EXIT_OK", "EXIT_SILENT", "exit_code", "render", "settled", "wait_for_current"]

EXIT_OK = 0
EXIT_LAGGING = 1
EXIT_SILENT = 3


def settled(view: FleetView, since: datetime | None = None) -> bool:
    """Whether every reporting cell is current, and (with a filter) every matching instance too.

    With ``since``, the current dataset must also have become current at or after it.
    """
    behind = [e for e in view.enforcement if e.cell_state is not CellState.SILENT and e.version < view.dataset_version]
    return view.converged and not behind and (since is None or view.current_since >= since)


def exit_code(view: FleetView, since: datetime | None = None) -> int:
    """See the module docstring."""
    if not settled(view, since):
        return EXIT_LAGGING
    return EXIT_SILENT if view.totals.cells.get(CellState.SILENT, 0) else EXIT_OK


def wait_for_current(fetch: Callable[[], FleetView], *, timeout: float, poll: float, since: datetime | None = None,
                     clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                     progress: Callable[[FleetView], None] | None = None) -> FleetView:
    """Fetch the view until :func:`settled` or ``timeout`` seconds passed; the last view either way."""
    deadline = clock() + timeout
    while True:
        view = fetch()
        if settled(view, since) or clock() >= deadline:
            return view
        if progress is not None:
            progress(view)
        sleep(max(0.0, min(poll, deadline - clock())))


def _ago(view: FleetView, moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"{max(0.0, (view.generated_at - moment).total_seconds()):.1f}s ago"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def render(view: FleetView) -> str:
    """The view for people: the version, one row per cell, totals, then instances and denial rises."""
    lines = [f"policy server dataset version {view.dataset_version}, current since "
             f"{format_time(view.current_since)} ({_ago(view, view.current_since)}); a cell is silent after "
             f"{view.silent_after_intervals} missed reports", ""]
    rows: list[tuple[str, ...]] = [
        ("CELL", "STATE", "SINCE", "VERSION", "CURRENT", "LAGGING", "FAILED", "DRIFTED", "LAST REPORT")]
    for c in view.cells:
        n = c.containers
        rows.append((c.name, c.state.value, _ago(view, c.since) if c.since else "-", str(c.dataset_version),
                     str(n.current), str(n.lagging), str(n.failed), str(n.drifted), _ago(view, c.reported_at)))
    t = view.totals
    states = ", ".join(f"{t.cells.get(s, 0)} {s.value}" for s in CellState)
    rows.append(("TOTAL", f"{len(view.cells)} cells", f"oldest lag {t.oldest_lag_seconds:.1f}s", "",
                 str(t.containers.current), str(t.containers.lagging), str(t.containers.failed),
                 str(t.containers.drifted), f"{t.containers.silent} on silent cells"))
    lines += _columns(rows)
    lines.append(f"cells: {states}")
    if view.app or view.space:
        what = " and ".join(f"{k} {v}" for k, v in (("app", view.app), ("space", view.space)) if v)
        lines += ["", f"instances of {what}:"]
        if view.enforcement:
            rows = [("APP", "SPACE", "CELL", "CELL STATE", "ENFORCES", "INSTANCES", "")]
            rows += [(e.app, e.space or "-", e.cell_name, e.cell_state.value, str(e.version), str(e.containers),
                      "" if e.version >= view.dataset_version else "BEHIND") for e in view.enforcement]
            lines += _columns(rows)
        else:
            lines.append("  none on any reporting cell")
    if view.denials_rose:
        lines += ["", "apps whose refused egress rose after their security groups changed:"]
        rows = [("APP", "SPACE", "CELL", "ENFORCES", "DENIED PACKETS", "ROSE AT")]
        rows += [(d.app, d.space or "-", d.cell_name, str(d.version), str(d.denied_packets),
                  format_time(d.denials_rose_at) or "-") for d in view.denials_rose]
        lines += _columns(rows)
    return "\n".join(lines) + "\n"


def print_view(view: FleetView, *, as_json: bool) -> None:
    """Write the view to stdout, as JSON (the published fleet-view document) or as a table."""
    if as_json:
        json.dump(view.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(view))
