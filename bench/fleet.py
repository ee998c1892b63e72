"""Fleet-audit benchmark: cell reports from 10,000 simulated cells against the real policy server on PostgreSQL.

Run: ``.venv/bin/python bench/fleet.py [--quick] [--cells 10000] [--apps 50] [--seconds 120]``

Each simulated cell sends one report (``PUT /networking/v1/internal/cell-reports``, the
real :class:`~dynamic_asgs.fleet.report.CellReport` body with ``--apps`` apps) per default
agent interval (60 s), so the offered load is ``cells / 60`` reports per second, open loop,
in real time (nothing is compressed). Reports travel over keep-alive mutual-TLS
connections, as an agent keeps its session between reports (fresh-connection costs are
measured by ``bench/control_plane.py``). The load generator is a separate process on the
same machine. The policy DB is seeded with every cell first, so the run measures the
steady state: every report updates its cell's row.

The same load runs twice against a fresh policy server (2 workers): with batched writes
(``report_flush_interval_ms`` 1000, the default) and with batching off (0: one transaction
per report, before the answer). For each it prints the reports accepted per second, the
server's CPU (user+sys of all its processes per second of wall time), the report write
transactions and rows per second (the server's own counters), PostgreSQL's commits and
tuples written per second for the database (``pg_stat_database``: these include the
servers' read transactions, e.g. each worker's dataset check, and the TOAST chunks of a
report's apps), and the report latency, all over the load's window (from the moment the
generator has built its reports and connected, to 1.5 s after its last report).
Then, at ``--cells`` cells, the time to answer ``GET /fleet`` and ``GET /fleet?app=``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test harness: processes, databases, certificates

from procstat import cpu_seconds, descendants, percentile  # noqa: E402

from dynamic_asgs.fleet.report import REPORTS_PATH, AppEnforcement, CellReport, ContainerCounts  # noqa: E402
from dynamic_asgs.fleet.view import FLEET_PATH  # noqa: E402
from dynamic_asgs.policy_server.server import raise_open_files_limit  # noqa: E402
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine  # noqa: E402
from dynamic_asgs.policydb.migrate import upgrade  # noqa: E402
from dynamic_asgs.policydb.reports import ReportStore  # noqa: E402
from dynamic_asgs.policydb.store import GroupRow, PolicyStore  # noqa: E402
from dynamic_asgs.tls import client_context  # noqa: E402
from support.daemons import PolicyServer, database, database_config, free_port, start_policy_server  # noqa: E402

REPORTS = REPORTS_PATH
FLEET = FLEET_PATH
INTERVAL = 60.0
ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def guid(rnd: random.Random) -> str:
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


def make_reports(cells: int, apps: int, seed: int = 5) -> list[CellReport]:
    """``cells`` reports of ``apps`` apps each: 2% of the cells one version behind with lagging containers."""
    rnd = random.Random(seed)
    spaces = [guid(rnd) for _ in range(max(1, cells * apps // 20))]
    reports = []
    for i in range(cells):
        behind = rnd.random() < 0.02
        entries = tuple(AppEnforcement(guid(rnd), rnd.choice(spaces), 0 if behind else 1, rnd.randint(1, 4),
                                       rnd.choice((0, 0, 0, rnd.randint(1, 5000))))
                        for _ in range(apps))
        containers = sum(a.containers for a in entries)
        counts = ContainerCounts(current=0 if behind else containers, lagging=containers if behind else 0)
        reports.append(CellReport(guid(rnd), f"diego-cell/{i}", INTERVAL, 0 if behind else 1, counts,
                                  None, entries))
    return reports


def report_request(body: bytes) -> bytes:
    return (f"PUT {REPORTS} HTTP/1.1\r\nHost: policy-server\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1])


async def load(spec: dict[str, Any]) -> dict[str, Any]:
    """Open-loop reports at ``rate`` per second for ``seconds`` over a pool of keep-alive connections."""
    pki = Path(spec["pki_dir"])
    context = client_context(ca_file=str(pki / "ps-ca.crt"), cert_file=str(pki / "ps-client.crt"),
                             key_file=str(pki / "ps-client.key"))
    bodies = [report_request(r.to_bytes()) for r in make_reports(spec["cells"], spec["apps"])]
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(spec["connections"]):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", spec["port"], ssl=context))
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    print("ready", flush=True)  # the parent starts measuring now

    async def one(body: bytes, due: float) -> None:
        reader, writer = await pool.get()
        try:
            writer.write(body)
            status = str(await read_response(reader))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
            pool.put_nowait(await asyncio.open_connection("127.0.0.1", spec["port"], ssl=context))
            return
        latencies.append(time.perf_counter() - due)
        statuses[status] = statuses.get(status, 0) + 1
        pool.put_nowait((reader, writer))

    rate, total = spec["rate"], int(spec["rate"] * spec["seconds"])
    tasks, start = [], time.perf_counter()
    for i in range(total):
        due = start + i / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], due)))
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "statuses": statuses, "elapsed": time.perf_counter() - start}
def pg_counters(name: str) -> tuple[int, int]:
    """(commits, rows inserted + updated) of database ``name`` so far."""
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            row = conn.execute(sa.text("SELECT xact_commit, tup_inserted + tup_updated FROM pg_stat_database "
                                       "WHERE datname = :name"), {"name": name}).one()
    finally:
        admin.dispose()
    return int(row[0]), int(row[1])


def server_counter(port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0

def run_load(spec: dict[str, Any], on_ready: Callable[[], None]) -> dict[str, Any]:
    """The load generator in its own process (spec in on stdin, result from a file); ``on_ready`` as it starts."""
    spec["result"] = str(Path(tempfile.gettempdir()) / f"dasg-fleet-bench-{os.getpid()}.json")
    child = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps(spec))
    child.stdin.close()
    if child.stdout.readline().strip() == "ready":
        on_ready()
    if child.wait() != 0:
        raise RuntimeError(f"load generator exited with {child.returncode}")
    path = Path(spec["result"])
    result: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return result


def timed_gets(server: PolicyServer, params: dict[str, str], times: int) -> tuple[float, float, int]:
    """(median seconds, slowest seconds, answer bytes) of ``times`` GET /fleet, each on a fresh session."""
    seconds, size = [], 0
    for _ in range(times):
        with requests.Session() as session:
            tls: dict[str, Any] = {"verify": str(server.pki.ca.cert_path), "cert": server.client_cert()}
            session.get(server.url + "/networking/v1/internal/security_groups", timeout=30, **tls)  # the handshake
            start = time.perf_counter()
            r = session.get(server.url + FLEET, params=params, timeout=120, **tls)
            seconds.append(time.perf_counter() - start)
            r.raise_for_status()
            size = len(r.content)
    return statistics.median(seconds), max(seconds), size


def measure(mode: str, flush_ms: int, settings: DatabaseSettings, tmp: Path, args: argparse.Namespace
            ) -> dict[str, Any]:
    metrics_port = free_port()
    server = start_policy_server(tmp / mode, database_config(settings), workers=2, metrics_port=metrics_port,
                                 report_flush_interval_ms=flush_ms)
    try:
        pids = descendants(server.daemon.pid)
        rate = args.cells / INTERVAL
        spec = {"pki_dir": str(tmp / mode / "ps-pki"), "port": server.port, "cells": args.cells, "apps": args.apps,
                "rate": rate, "seconds": args.seconds, "connections": args.connections}
        before: dict[str, Any] = {}

        def start() -> None:
            before.update(writes=server_counter(metrics_port, "fleet_report_flush_seconds_count"),
                          rows=server_counter(metrics_port, "fleet_reports_written_total"),
                          pg=pg_counters(settings.database_name), cpu=cpu_seconds(pids), wall=time.monotonic())

        result = run_load(spec, start)
        time.sleep(1.5)  # the last batch is written, PostgreSQL's counters flushed
        wall = time.monotonic() - before["wall"]
        cpu = cpu_seconds(pids) - before["cpu"]
        pg1 = pg_counters(settings.database_name)
        pg0 = before["pg"]
        writes = server_counter(metrics_port, "fleet_report_flush_seconds_count") - before["writes"]
        rows = server_counter(metrics_port, "fleet_reports_written_total") - before["rows"]
        out: dict[str, Any] = {
            "offered": rate, "accepted": result["statuses"].get("202", 0) / result["elapsed"],
            "statuses": result["statuses"], "cpu": cpu / wall, "cpu_per_1k": 1000 * cpu / max(1, rows),
            "writes": writes / wall, "rows": rows / wall, "pg_commits": (pg1[0] - pg0[0]) / wall,
            "pg_tuples": (pg1[1] - pg0[1]) / wall, "p50": percentile(result["latencies"], 0.5),
            "p99": percentile(result["latencies"], 0.99),
        }
        if mode == "batched":
            app = make_reports(1, args.apps)[0].apps[0]
            out["fleet"] = timed_gets(server, {}, 5)
            out["fleet_app"] = timed_gets(server, {"app": app.guid}, 5)
            out["fleet_space"] = timed_gets(server, {"space": app.space}, 5)
        return out
    finally:
        server.daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--cells", type=int, default=10000)
    parser.add_argument("--apps", type=int, default=50, help="apps (policy groups) per cell")
    parser.add_argument("--seconds", type=float, default=120.0, help="load duration per mode")
    parser.add_argument("--connections", type=int, default=200, help="keep-alive connections of the generator")
    parser.add_argument("--quick", action="store_true", help="20 s per mode")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        raise_open_files_limit()
        spec = json.loads(sys.stdin.read())
        Path(spec["result"]).write_text(json.dumps(uvloop.run(load(spec))))
        return
    if args.quick:
        args.seconds = 20.0
    raise_open_files_limit()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (stop the servers) on SIGTERM
    reports = make_reports(args.cells, args.apps)
    sizes = [len(r.to_bytes()) for r in reports]
    print(f"fleet benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, PostgreSQL on 127.0.0.1; "
          f"{args.cells} cells x {args.apps} apps, one report per cell per {INTERVAL:g} s "
          f"({args.cells / INTERVAL:.1f} reports/s), {args.seconds:g} s per mode, {args.connections} keep-alive "
          f"mTLS connections, policy server with 2 workers")
    print(f"report body: {statistics.mean(sizes):,.0f} bytes mean ({min(sizes):,}-{max(sizes):,}), "
          f"+{len(report_request(b'')):,} bytes of request head")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dasg-fleet-bench-") as tmp_name, \
            database("postgres", Path(tmp_name) / "db") as settings:
        tmp = Path(tmp_name)
        engine = create_engine(settings)
        upgrade(engine)
        PolicyStore(engine).replace([GroupRow("g", "dns", "[]", True, True, (), ())], cc_last_update="bench")
        ReportStore(engine).write(reports)  # the steady state: every cell has reported before
        engine.dispose()
        for mode, flush_ms in (("batched", 1000), ("per-report", 0)):
            results[mode] = measure(mode, flush_ms, settings, tmp, args)
    batched, single = results["batched"], results["per-report"]
    rows = [
        ("reports/s offered", "offered", "{:.1f}"), ("reports/s accepted (202)", "accepted", "{:.1f}"),
        ("server CPU, s per s of wall time", "cpu", "{:.3f}"), ("server CPU s per 1,000 reports", "cpu_per_1k",
                                                                  "{:.3f}"),
        ("report write transactions/s", "writes", "{:.2f}"), ("report rows written/s", "rows", "{:.1f}"),
        ("PostgreSQL commits/s (all, incl. reads)", "pg_commits", "{:.1f}"),
        ("PostgreSQL tuples inserted+updated/s", "pg_tuples", "{:.1f}"),
        ("report latency p50, ms", "p50", "{:.1f}"), ("report latency p99, ms", "p99", "{:.1f}"),
    ]
    print(f"\n{'':42} {'batched (1000 ms)':>18} {'one tx per report':>18} {'ratio':>8}")
    for label, key, fmt in rows:
        scale = 1000 if key in ("p50", "p99") else 1
        b, s = batched[key] * scale, single[key] * scale
        ratio = f"{s / b:.1f}x" if b else "-"
        print(f"{label:42} {fmt.format(b):>18} {fmt.format(s):>18} {ratio:>8}")
    print(f"answers: batched {batched['statuses']}, one tx per report {single['statuses']}")
    print(f"\nfleet view at {args.cells} cells (idle server, 5 requests each, keep-alive mTLS):")
    for label, key in (("GET /fleet", "fleet"), ("GET /fleet?app=", "fleet_app"), ("GET /fleet?space=", "fleet_space")):
        median, slowest, size = batched[key]
        print(f"  {label:20} median {median * 1000:7.1f} ms, slowest {slowest * 1000:7.1f} ms, {size:,} bytes")


if __name__ == "__main__":
    main()
