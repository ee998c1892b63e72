"""``dynamic-asgs audit``: is the current ASG dataset in effect in every container of the fleet?

Without ``--agent``/``--agents-file`` the policy server answers alone, from the reports every
agent sends it (:mod:`.fleet_audit`: ``--app``, ``--space``, ``--wait-for current``). With them,
the audit reads the named agents' own status (the fallback when reports are off):

1. ask the policy server (mutual TLS, like an agent) for its current dataset version and
   when it changed (``X-Dataset-Version``, ``X-Dataset-Changed-At``);
2. read every agent's ``/asg-status`` (``http://127.0.0.1:<debug_server_port>/asg-status``
   on the cell, or a saved copy of it), concurrently, each with a timeout;
3. per cell and in total: how many containers enforce that version (or a newer one, if the
   server moved on while the audit ran), which lag, which version they enforce since when,
   and for how long the current version has been out without them (``lag_seconds``:
   now minus the time the current version appeared, so a lower bound of the true lag).

Exit status (documented in docs/operations.md):

* 0: every agent answered and no container lags by more than ``--max-lag`` seconds;
* 1: at least one container lags by more than ``--max-lag`` (a definite "no", so it wins);
* 3: no lag beyond ``--max-lag`` was found, but some agent could not be read (incomplete);
* 2: bad flags or input, or the policy server could not be asked (nothing to compare with).

The report is computed by pure functions (:func:`build_report`) from the fetched documents,
so it is tested without any network. Each document is read with the agent's own type
(:meth:`~dynamic_asgs.agent.status.AgentStatus.from_json`): a document that does not match
it makes its cell unreachable, with the path of the first bad value.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from dynamic_asgs.agent.policy_client import PolicyClient
from dynamic_asgs.agent.status import AgentStatus, format_instant, instant
from dynamic_asgs.errors import DocumentError, InputError, UpstreamError
from dynamic_asgs.fleet.report import parse_time
from dynamic_asgs.fleet.view import FleetView
from dynamic_asgs.tools import fleet_audit

__all__ = [
    "EXIT_LAGGING",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "AgentTarget",
    "AuditReport",
    "CellReport",
    "Current",
    "LaggingContainer",
    "add_arguments",
    "build_report",
    "cell_report",
    "parse_targets",
    "render_table",
    "run",
]

EXIT_OK = 0
EXIT_LAGGING = 1
EXIT_UNREACHABLE = 3
STATUS_PATH = "/asg-status"
_GUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})")


@dataclass(frozen=True, slots=True)
class Current:
    """The policy server's dataset version and when it appeared (UNIX time, if the server says)."""

    version: int
    changed_at: float | None


@dataclass(frozen=True, slots=True)
class AgentTarget:
    """One cell to audit: a name and its ``/asg-status`` URL, or a file holding a saved copy."""

    name: str
    source: str

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))


@dataclass(frozen=True, slots=True)
class LaggingContainer:
    """A container not enforcing the current dataset version."""

    handle: str
    app_guid: str | None
    space_guid: str | None
    dataset_version: int | None  # the version it enforces (None: none recorded yet)
    enforcing_since: str | None
    lag_seconds: float | None  # None when the server did not say when the current version appeared
    beyond_max_lag: bool


@dataclass(slots=True)
class CellReport:
    """One cell's answer, or why there is none."""

    name: str
    source: str
    reachable: bool
    error: str | None = None
    agent_dataset_version: int | None = None
    agent_error: str | None = None  # the agent's own complaint (e.g. its policy-server requests fail)
    containers: int = 0
    current: int = 0
    lagging: list[LaggingContainer] = field(default_factory=list)

    @property
    def beyond_max_lag(self) -> int:
        return sum(1 for c in self.lagging if c.beyond_max_lag)

    @property
    def state(self) -> str:
        if not self.reachable:
            return "UNREACHABLE"
        if self.beyond_max_lag:
            return "LAGGING"
        return "catching-up" if self.lagging else "ok"


@dataclass(slots=True)
class AuditReport:
    """The fleet: the current version, every cell, totals and the exit status they imply."""

    current: Current
    max_lag: float
    generated_at: float
    cells: list[CellReport]

    def totals(self) -> dict[str, int]:
        """Fleet-wide counts."""
        reachable = [c for c in self.cells if c.reachable]
        return {
            "cells": len(self.cells), "cells_unreachable": len(self.cells) - len(reachable),
            "containers": sum(c.containers for c in reachable), "current": sum(c.current for c in reachable),
            "lagging": sum(len(c.lagging) for c in reachable),
            "lagging_beyond_max_lag": sum(c.beyond_max_lag for c in reachable),
        }

    def exit_code(self) -> int:
        """:data:`EXIT_LAGGING` if any container lags too long, else :data:`EXIT_UNREACHABLE` if any cell is
        missing, else :data:`EXIT_OK`."""
        totals = self.totals()
        if totals["lagging_beyond_max_lag"]:
            return EXIT_LAGGING
        return EXIT_UNREACHABLE if totals["cells_unreachable"] else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        cells = []
        for c in self.cells:
            doc = {k: v for k, v in asdict(c).items() if k != "lagging"}
            doc.update(state=c.state, lagging=[asdict(x) for x in c.lagging], lagging_beyond_max_lag=c.beyond_max_lag)
            cells.append(doc)
        return {
            "policy_server": {"dataset_version": self.current.version, "changed_at": _iso(self.current.changed_at)},
            "generated_at": _iso(self.generated_at), "max_lag_seconds": self.max_lag,
            "totals": self.totals(), "exit_code": self.exit_code(), "cells": cells,
        }


def _iso(ts: float | None) -> str | None:
    return None if ts is None else format_instant(instant(ts))


def cell_report(target: AgentTarget, status: object, current: Current, *, now: float, max_lag: float) -> CellReport:
    """Judge one agent's ``/asg-status`` document against the current version."""
    try:
        doc = AgentStatus.from_json(status)
    except DocumentError as exc:
        return CellReport(target.name, target.source, reachable=False, error=f"unusable status: {exc}")
    report = CellReport(target.name, target.source, reachable=True, agent_dataset_version=doc.dataset_version,
                        agent_error=doc.policy_server.error or None)
    lag = None if current.changed_at is None else max(0.0, now - current.changed_at)
    for handle, entry in sorted(doc.containers.items()):
        version = entry.dataset_version
        report.containers += 1
        if version is not None and version >= current.version:
            report.current += 1
            continue
        report.lagging.append(LaggingContainer(
            handle=handle, app_guid=entry.app_guid, space_guid=entry.space_guid, dataset_version=version,
            enforcing_since=format_instant(entry.enforcing_since), lag_seconds=lag,
            beyond_max_lag=lag is None or lag > max_lag))
    return report


def build_report(current: Current, answers: Sequence[tuple[AgentTarget, object]], *, now: float,
                 max_lag: float) -> AuditReport:
    """The fleet report from each target's status document, or the exception that stood in its way."""
    cells = [CellReport(t.name, t.source, reachable=False, error=str(a)) if isinstance(a, BaseException)
             else cell_report(t, a, current, now=now, max_lag=max_lag) for t, a in answers]
    return AuditReport(current=current, max_lag=max_lag, generated_at=now, cells=cells)


# -- input -------------------------------------------------------------------------------------


def _target(entry: str, origin: str) -> AgentTarget:
    """``NAME URL``, ``NAME=URL`` or ``URL`` (a URL or a file path; a path containing ``=`` needs a name)."""
    entry = entry.strip()
    name, source = "", entry
    if " " in entry:
        name, source = entry.split(None, 1)
    elif "=" in entry and not entry.startswith(("http://", "https://", "/", ".")):
        name, source = entry.split("=", 1)
    if not source or " " in source:
        raise InputError(f"{origin}: expected [NAME] URL|FILE, got {entry!r}")
    if source.startswith(("http://", "https://")):
        parts = urlsplit(source)
        if not parts.hostname:
            raise InputError(f"{origin}: {source!r} is not a URL")
        if parts.path in ("", "/"):
            source = source.rstrip("/") + STATUS_PATH
        name = name or parts.netloc
    return AgentTarget(name or source, source)


def parse_targets(agents: Iterable[str], files: Iterable[str]) -> list[AgentTarget]:
    """Targets from ``--agent`` values and ``--agents-file`` lines (``[NAME] URL|FILE``; ``#`` comments)."""
    targets = [_target(a, "--agent") for a in agents]
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                targets.append(_target(line, f"{path}:{number}"))
    if not targets:
        raise InputError("no agents to audit: give --agent URL or --agents-file FILE")
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"cells listed twice: {', '.join(duplicates)}")
    return targets


def fetch_status(target: AgentTarget, timeout: float) -> Any:
    """One agent's status document (as JSON); raises a one-line error when it cannot be had.

    :class:`InputError` for a saved copy that cannot be read, :class:`UpstreamError` for an agent
    that does not answer with JSON.
    """
    if not target.is_url:
        try:
            return json.loads(Path(target.source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read {target.source}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # not JSON, or not UTF-8
            where = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise InputError(f"{target.source}: not valid JSON: {where}") from exc
    try:
        response = requests.get(target.source, timeout=timeout)
    except requests.Timeout as exc:
        raise UpstreamError(f"no answer within {timeout:g} s") from exc
    except requests.RequestException as exc:
        raise UpstreamError(f"cannot connect: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise UpstreamError(f"HTTP {response.status_code} from {target.source}")
    try:
        return response.json()
    except ValueError as exc:
        raise UpstreamError("answer is not JSON") from exc


def fetch_all(targets: Sequence[AgentTarget], *, timeout: float, parallel: int,
              fetch: Callable[[AgentTarget, float], Any] = fetch_status) -> list[tuple[AgentTarget, Any]]:
    """Every target's document or exception, in the order given."""
    def one(target: AgentTarget) -> Any:
        try:
            return fetch(target, timeout)
        except Exception as exc:  # reported per cell; one bad cell never stops the audit
            return exc
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        return list(zip(targets, pool.map(one, targets), strict=True))


def current_version(client: PolicyClient) -> Current:
    """The policy server's current dataset version (one small request: global groups only)."""
    result = client.fetch([])
    if result.dataset_version is None:
        raise UpstreamError("policy server: the answer carries no X-Dataset-Version header")
    return Current(result.dataset_version, result.changed_at)


# -- output ------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}s"


def render_table(report: AuditReport) -> str:
    """The report for people: the current version, one row per cell, totals, then each lagging container."""
    cur = report.current
    ago = "" if cur.changed_at is None else f" ({_seconds(report.generated_at - cur.changed_at)} ago)"
    lines = [f"policy server dataset version {cur.version}, changed at {_iso(cur.changed_at) or 'unknown'}{ago}; "
             f"max lag {report.max_lag:g}s", ""]
    rows = [("CELL", "STATE", "CONTAINERS", "CURRENT", "LAGGING", "NOTE")]
    for c in report.cells:
        if not c.reachable:
            rows.append((c.name, c.state, "-", "-", "-", c.error or ""))
            continue
        note = f"agent at version {c.agent_dataset_version}"
        if c.agent_error:
            note += f"; agent reports: {c.agent_error}"
        rows.append((c.name, c.state, str(c.containers), str(c.current), str(len(c.lagging)), note))
    t = report.totals()
    rows.append(("TOTAL", f"{t['cells']} cells, {t['cells_unreachable']} unreachable", str(t["containers"]),
                 str(t["current"]), str(t["lagging"]), f"{t['lagging_beyond_max_lag']} beyond max lag"))
    lines += _columns(rows)
    lagging = [(c.name, x) for c in report.cells for x in c.lagging]
    if lagging:
        lines += ["", "lagging containers (behind the current version since it appeared):"]
        lag_rows = [("CELL", "HANDLE", "APP", "ENFORCES", "SINCE", "LAG", "")]
        for name, x in lagging:
            lag_rows.append((name, x.handle, x.app_guid or "-", "none" if x.dataset_version is None
                             else str(x.dataset_version), x.enforcing_since or "-", _seconds(x.lag_seconds),
                             "BEYOND MAX LAG" if x.beyond_max_lag else ""))
        lines += _columns(lag_rows)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


# -- command -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit's flags: the policy server (as an agent reaches it) and the agents to read."""
    parser.add_argument("--policy-server-url", required=True, metavar="URL",
                        help="e.g. https://policy-server.service.cf.internal:4003")
    parser.add_argument("--ca-cert", required=True, metavar="FILE", help="CA of the policy server's certificate")
    parser.add_argument("--client-cert", required=True, metavar="FILE", help="client certificate (an agent's)")
    parser.add_argument("--client-key", required=True, metavar="FILE", help="its private key")
    parser.add_argument("--app", metavar="GUID", help="show which instances of this app enforce which version")
    parser.add_argument("--space", metavar="GUID", help="show which instances of this space's apps enforce which "
                        "version")
    parser.add_argument("--wait-for", choices=["current"], help="ask again until every reporting cell (and "
                        "instance, with --app/--space) enforces the current version, or --timeout passes (exit 1)")
    parser.add_argument("--since", metavar="TIME", help="with the fleet view: the current dataset must have become "
                        "current at or after TIME (RFC 3339, e.g. 2026-12-06T04:00:00Z: when you changed the ASG)")
    parser.add_argument("--poll", type=float, default=2.0, metavar="SECONDS",
                        help="with --wait-for: seconds between two asks (default 2)")
    parser.add_argument("--agent", action="append", default=[], metavar="[NAME=]URL|FILE",
                        help="read this agent's own status instead: http://127.0.0.1:8731/asg-status, or a saved "
                        "copy (repeatable)")
    parser.add_argument("--agents-file", action="append", default=[], metavar="FILE",
                        help="one cell per line: [NAME] URL|FILE; '#' starts a comment (repeatable)")
    parser.add_argument("--max-lag", type=float, default=0.0, metavar="SECONDS",
                        help="tolerated lag behind the current version before exiting 1 (default 0)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="per request (default 5); with --wait-for, the whole wait (default 300)")
    parser.add_argument("--parallel", type=int, default=16, metavar="N", help="agents read at once (default 16)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")


def run(args: argparse.Namespace) -> int:
    """Audit the fleet; print the report; return 0, 1 (lag beyond --max-lag) or 3 (an agent unreadable)."""
    timeout = args.timeout if args.timeout is not None else (300.0 if args.wait_for else 5.0)
    if args.max_lag < 0 or timeout <= 0 or args.parallel < 1 or args.poll <= 0:
        raise InputError("--max-lag must be >= 0, --timeout > 0, --poll > 0 and --parallel >= 1")
    if not args.agent and not args.agents_file:
        return _fleet(args, timeout)
    targets = parse_targets(args.agent, args.agents_file)
    if args.app or args.space or args.wait_for or args.since:
        raise InputError("--app, --space, --since and --wait-for read the policy server's fleet view: drop --agent and "
                         "--agents-file")
    client = PolicyClient(args.policy_server_url, ca_file=args.ca_cert, cert_file=args.client_cert,
                          key_file=args.client_key, timeout=timeout)
    try:
        current = current_version(client)
    finally:
        client.close()
    answers = fetch_all(targets, timeout=timeout, parallel=args.parallel)
    report = build_report(current, answers, now=time.time(), max_lag=args.max_lag)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(report))
    return report.exit_code()


def _fleet(args: argparse.Namespace, timeout: float) -> int:
    """The fleet view from the policy server alone (see :mod:`.fleet_audit`)."""
    for flag, value in (("--app", args.app), ("--space", args.space)):
        if value is not None and not _GUID.fullmatch(value):
            raise InputError(f"{flag}: {value[:60]!r} is not a GUID (letters, digits, '_', '.', '-')")
    since = None
    if args.since is not None:
        if not _TIME.fullmatch(args.since):
            raise InputError(f"--since: {args.since[:60]!r} is not an RFC 3339 time like 2026-12-06T04:00:00Z")
        since = parse_time(args.since)
    client = PolicyClient(args.policy_server_url, ca_file=args.ca_cert, cert_file=args.client_cert,
                          key_file=args.client_key, timeout=min(timeout, 30.0))
    try:
        def fetch() -> FleetView:
            return client.fleet(app=args.app, space=args.space)

        view = (fleet_audit.wait_for_current(fetch, timeout=timeout, poll=args.poll, since=since) if args.wait_for
                else fetch())
    finally:
        client.close()
    fleet_audit.print_view(view, as_json=args.json)
    return fleet_audit.exit_code(view, since)
