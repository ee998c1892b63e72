"""Control-plane benchmark: syncer, policy server under fresh mTLS connections, blocking queries.

Run: ``.venv/bin/python bench/control_plane.py [--quick] [--backends sqlite,postgres,mariadb]``

1. **Syncer**: a full sync of 1k, 10k and 50k ASGs from the CC stand-in (a separate
   process speaking CC's wire format over TLS/mTLS) into a fresh policy DB, end to end
   (token, ``last_update``, every page, validation, the store transaction); then an unchanged
   poll, a touched-but-identical listing and a 1% edit, with the requests each cost.
2. **Policy server** (2 uvicorn workers, 10k ASGs): simulated cells, each request a fresh
   TCP + mutual-TLS connection asking for 20 spaces, at a fixed offered rate, with and
   without ETag hits (304). Load generators run in separate processes on the same 2 cores,
   so server CPU per request is reported too.
3. **Blocking queries**: 5,000 agents (each its own connection and space set) wait with
   ``If-None-Match`` + ``wait=60``; the server's memory is read, a global ASG is changed in
   the DB, and the time until every agent has its new answer is measured.

Dataset: ``N`` groups, 10 globally enabled, the rest bound for running to one of ``N/2``
spaces (40% also for staging to another), 3 rules each: a 20-space query answers ~60 groups.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test harness: processes, databases, certificates

from procstat import cpu_seconds, descendants, percentile, rss_mib  # noqa: E402

from dynamic_asgs.cc.client import CloudController  # noqa: E402
from dynamic_asgs.cc.uaa import TokenSource  # noqa: E402
from dynamic_asgs.http.client import JsonHttp, Timeouts  # noqa: E402
from dynamic_asgs.lager import Logger  # noqa: E402
from dynamic_asgs.policy_server.server import raise_open_files_limit  # noqa: E402
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine  # noqa: E402
from dynamic_asgs.policydb.migrate import upgrade  # noqa: E402
from dynamic_asgs.policydb.store import GroupRow, PolicyStore  # noqa: E402
from dynamic_asgs.syncer.metrics import SyncerMetrics  # noqa: E402
from dynamic_asgs.syncer.sync import Syncer  # noqa: E402
from dynamic_asgs.tls import client_context, session_for  # noqa: E402
from support.daemons import (  # noqa: E402
    DB_ENGINES,
    CCStub,
    database,
    database_config,
    free_port,
    start_cc_stub,
    start_policy_server,
)

ROUTE = "/networking/v1/internal/security_groups"
GLOBAL = 10


def make_groups(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` groups in the stand-in's file format (see the module docstring)."""
    rnd = random.Random(seed)
    spaces = max(1, n // 2)
    groups = []
    for i in range(n):
        rules = [
            {"protocol": "tcp", "destination": f"10.{i % 250}.{i // 250 % 250}.0/24", "ports": "443,8443"},
            {"protocol": "udp", "destination": f"172.16.{i % 250}.10-172.16.{i % 250}.20", "ports": "53"},
            {"protocol": "icmp", "destination": "10.0.0.0/8", "type": 8, "code": -1},
        ]
        group: dict[str, Any] = {"name": f"asg-{i:06d}", "guid": f"a5a00000-0000-4000-8000-{i:012d}", "rules": rules}
        if i < GLOBAL:
            group["globally_enabled"] = {"running": True, "staging": True}
        else:
            group["running_spaces"] = [f"space-{rnd.randrange(spaces):06d}"]
            if rnd.random() < 0.4:
                group["staging_spaces"] = [f"space-{rnd.randrange(spaces):06d}"]
        groups.append(group)
    return groups


def space_sets(n_groups: int, count: int, size: int = 20, seed: int = 11) -> list[list[str]]:
    rnd = random.Random(seed)
    pool = max(1, n_groups // 2)
    return [[f"space-{rnd.randrange(pool):06d}" for _ in range(size)] for _ in range(count)]


def cc_for(stub: CCStub) -> CloudController:
    ca = str(stub.pki_dir / "cc-ca.crt")
    timeouts = Timeouts(connect=5, read=120)

    def http(url: str, service: str, cert: bool = False) -> JsonHttp:
        pair = (str(stub.pki_dir / "cc-client.crt"), str(stub.pki_dir / "cc-client.key")) if cert else (None, None)
        context = client_context(ca_file=ca, cert_file=pair[0], key_file=pair[1])
        return JsonHttp(url, session_for(context), service=service, timeouts=timeouts)

    tokens = TokenSource(http(stub.url, "uaa"), client_id="network-policy", client_secret="network-policy-secret")
    return CloudController(api=http(stub.url, "cc"), internal=http(stub.internal_url, "cc internal", True),
                           tokens=tokens)


def timed_poll(syncer: Syncer, stub: CCStub) -> tuple[float, str, dict[str, int], Any]:
    stub.reset()
    start = time.perf_counter()
    result = syncer.poll()
    seconds = time.perf_counter() - start
    return seconds, result.outcome, stub.stats()["requests"], result.result


def bench_syncer(sizes: list[int], backends: list[str], tmp: Path) -> None:
    print("\n== 1. Syncer: CC stand-in -> policy DB (end to end, in-process syncer, stand-in in its own process)")
    print(f"{'backend':9} {'ASGs':>6} {'full sync':>10} {'requests':>9} {'unchanged':>10} {'req':>4} "
          f"{'touched':>9} {'rows written':>12} {'1% edit':>9} {'rows':>6}")
    for size in sizes:
        groups = make_groups(size)
        stub = start_cc_stub(tmp / f"cc-{size}", groups)
        try:
            for backend in backends:
                with database(backend, tmp / f"db-{size}-{backend}") as settings:
                    _sync_rows(size, backend, settings, stub, groups)
        finally:
            stub.daemon.stop()


def _sync_rows(size: int, backend: str, settings: DatabaseSettings, stub: CCStub, groups: list[dict[str, Any]]
               ) -> None:
    engine = create_engine(settings)
    upgrade(engine)
    syncer = Syncer(cc=cc_for(stub), store=PolicyStore(engine), fence=None,
                    logger=Logger("bench", stream=open(os.devnull, "w")), metrics=SyncerMetrics())  # noqa: SIM115
    full, _, full_req, _ = timed_poll(syncer, stub)
    same, outcome, same_req, _ = timed_poll(syncer, stub)
    assert outcome == "unchanged"
    stub.touch()
    touched, _, _, touched_result = timed_poll(syncer, stub)
    edited = [dict(g, rules=g["rules"][:2]) if i % 100 == 0 else g for i, g in enumerate(groups)]
    before = stub.stats()["last_update"]
    stub.write_groups(edited)
    while stub.stats()["last_update"] == before:
        time.sleep(0.05)
    edit, _, _, edit_result = timed_poll(syncer, stub)
    before = stub.stats()["last_update"]
    stub.write_groups(groups)  # back to the original for the next backend
    while stub.stats()["last_update"] == before:
        time.sleep(0.05)
    engine.dispose()
    cc_total = sum(n for path, n in full_req.items() if path != "/oauth/token")
    print(f"{backend:9} {size:>6} {full:>9.2f}s {cc_total:>9} {same * 1000:>8.1f}ms "
          f"{sum(same_req.values()):>4} {touched:>8.2f}s {touched_result.inserted + touched_result.updated:>12} "
          f"{edit:>8.2f}s {edit_result.updated:>6}")


def client_ssl(pki_dir: Path) -> ssl.SSLContext:
    return client_context(ca_file=str(pki_dir / "ps-ca.crt"), cert_file=str(pki_dir / "ps-client.crt"),
                          key_file=str(pki_dir / "ps-client.key"))


def get_request(spaces: list[str], extra: str = "", query: str = "") -> bytes:
    return (f"GET {ROUTE}?space_guids={','.join(spaces)}{query} HTTP/1.1\r\nHost: policy-server\r\n{extra}\r\n"
            .encode())


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def fresh_connections(port: int, pki_dir: Path, rate: float, seconds: float, cells: list[dict[str, Any]]
                            ) -> dict[str, Any]:
    """Open-loop load: ``rate`` requests/s, each on a new mutual-TLS connection."""
    context = client_ssl(pki_dir)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    in_flight = asyncio.Semaphore(2000)

    async def one(cell: dict[str, Any]) -> None:
        async with in_flight:
            start = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
                extra = f"If-None-Match: {cell['etag']}\r\n" if cell.get("etag") else ""
                writer.write(get_request(cell["spaces"], extra + "Connection: close\r\n"))
                status, _, _ = await read_response(reader)
                writer.close()
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - start)
            statuses[str(status)] = statuses.get(str(status), 0) + 1

    tasks, start = [], time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(cells[i % len(cells)])))
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "statuses": statuses, "elapsed": time.perf_counter() - start}


async def blocking_agents(port: int, pki_dir: Path, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Each agent: fetch its answer, then hold a blocking query; report when each answer arrived."""
    context = client_ssl(pki_dir)
    connecting = asyncio.Semaphore(64)

    async def connect(cell: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with connecting:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(get_request(cell["spaces"]))
            _, headers, _ = await read_response(reader)
            writer.write(get_request(cell["spaces"], f"If-None-Match: {headers['etag']}\r\n", "&wait=60"))
            return reader, writer

    connections = await asyncio.gather(*(connect(cell) for cell in cells))
    print("ready", flush=True)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[float, int]:
        status, _, _ = await read_response(reader)
        arrived = time.monotonic()
        writer.close()
        return arrived, status

    results = await asyncio.gather(*(answer(r, w) for r, w in connections))
    return {"arrivals": [a for a, _ in results], "statuses": sorted({s for _, s in results})}


def worker_main(spec: dict[str, Any]) -> None:
    """Entry point of a load-generating child process (spec on stdin; uvloop keeps the clients cheap)."""
    raise_open_files_limit()
    pki_dir = Path(spec["pki_dir"])
    if spec["kind"] == "fresh":
        result = uvloop.run(fresh_connections(spec["port"], pki_dir, spec["rate"], spec["seconds"], spec["cells"]))
    else:
        result = uvloop.run(blocking_agents(spec["port"], pki_dir, spec["cells"]))
    Path(spec["result"]).write_text(json.dumps(result))


def spawn_workers(specs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    """Start one load-generating process per spec (the spec goes in on stdin, results to a file)."""
    children = []
    for index, spec in enumerate(specs):
        spec["result"] = str(Path(tempfile.gettempdir()) / f"dasg-bench-{os.getpid()}-{index}.json")
        child = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None
        child.stdin.write(json.dumps(spec))
        child.stdin.close()
        children.append(child)
    return children


def collect(children: list[subprocess.Popen[str]], specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wait for the workers; return their results."""
    results = []
    for child, spec in zip(children, specs, strict=True):
        if child.wait() != 0:
            raise RuntimeError(f"load worker exited with {child.returncode}")
        path = Path(spec["result"])
        results.append(json.loads(path.read_text()))
        path.unlink()
    return results



def rows_of(groups: list[dict[str, Any]]) -> list[GroupRow]:
    return [GroupRow(g["guid"], g["name"], json.dumps(g["rules"], separators=(",", ":")),
                     bool(g.get("globally_enabled")), bool(g.get("globally_enabled")),
                     tuple(sorted(g.get("staging_spaces", []))), tuple(sorted(g.get("running_spaces", []))))
            for g in groups]


async def prefetch_etags(port: int, pki_dir: Path, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl(pki_dir))
    out = []
    for cell in cells:
        writer.write(get_request(cell["spaces"]))
        _, headers, _ = await read_response(reader)
        out.append({**cell, "etag": headers["etag"]})
    writer.close()
    return out


def run_load(server_pids: list[int], port: int, pki_dir: Path, cells: list[dict[str, Any]], rate: float,
             seconds: float, processes: int = 2) -> dict[str, Any]:
    specs = [{"kind": "fresh", "port": port, "pki_dir": str(pki_dir), "rate": rate / processes, "seconds": seconds,
              "cells": cells[i::processes]} for i in range(processes)]
    cpu_before = cpu_seconds(server_pids)
    children = spawn_workers(specs)
    results = collect(children, specs)
    server_cpu = cpu_seconds(server_pids) - cpu_before
    latencies = [x for r in results for x in r["latencies"]]
    statuses: dict[str, int] = {}
    for r in results:
        for key, count in r["statuses"].items():
            statuses[key] = statuses.get(key, 0) + count
    elapsed = max(r["elapsed"] for r in results)
    return {"achieved": len(latencies) / elapsed, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "statuses": statuses, "cpu_ms": 1000 * server_cpu / max(1, len(latencies))}


def bench_server(server_pids: list[int], port: int, pki_dir: Path, n_groups: int, seconds: float) -> None:
    print(f"\n== 2. Policy server: {n_groups} ASGs, 20 spaces per query, a fresh mTLS connection per request "
          f"(2 workers; load from 2 processes on the same 2 cores)")
    cells = [{"spaces": s} for s in space_sets(n_groups, 1000)]
    with_etags = asyncio.run(prefetch_etags(port, pki_dir, cells))
    print(f"{'mode':24} {'offered/s':>9} {'achieved/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'server CPU/req':>14}  statuses")
    for label, chosen, rate in (("full answers (200)", cells, 300), ("ETag hits (304)", with_etags, 300),
                                ("full answers (200)", cells, 500), ("full answers (200)", cells, 600)):
        r = run_load(server_pids, port, pki_dir, chosen, rate, seconds)
        print(f"{label:24} {rate:>9} {r['achieved']:>10.0f} {r['p50'] * 1000:>7.1f} {r['p99'] * 1000:>7.1f} "
              f"{r['cpu_ms']:>11.2f} ms  {r['statuses']}")


def waiting_requests(metrics_port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("internal_security_groups_waiting_requests"))


def bench_blocking(server_pid: int, metrics_port: int, port: int, pki_dir: Path, store: PolicyStore,
                   rows: list[GroupRow], agents: int) -> None:
    print(f"\n== 3. Blocking queries: {agents} agents, each its own mTLS connection and 20 spaces, wait=60")
    idle = rss_mib(descendants(server_pid))
    cells = [{"spaces": s} for s in space_sets(len(rows), agents, seed=23)]
    start = time.monotonic()
    specs = [{"kind": "agents", "port": port, "pki_dir": str(pki_dir), "cells": cells[i::2]} for i in range(2)]
    children = spawn_workers(specs)
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    connected = time.monotonic() - start
    time.sleep(2)
    held, loaded = waiting_requests(metrics_port), rss_mib(descendants(server_pid))
    first = rows[0]
    changed = [dataclasses.replace(first, rules=first.rules.replace("443,8443", "443")), *rows[1:]]
    store.replace(changed, cc_last_update="bench-change")
    committed = time.monotonic()
    results = collect(children, specs)
    delays = [a - committed for r in results for a in r["arrivals"]]
    statuses = sorted({s for r in results for s in r["statuses"]})
    print(f"agents connected in {connected:.1f} s; held by the server: {held:.0f}")
    print(f"server RSS (main + workers): idle {idle:.0f} MiB, holding {agents} agents {loaded:.0f} MiB "
          f"(+{(loaded - idle) * 1024 / agents:.0f} KiB per agent)")
    print(f"dataset change -> answer at every agent: p50 {percentile(delays, 0.5):.2f} s, "
          f"p99 {percentile(delays, 0.99):.2f} s, all {max(delays):.2f} s "
          f"(includes the 0.5 s version check and the reload); statuses {statuses}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs")
    parser.add_argument("--backends", default=",".join(DB_ENGINES), help="policy DBs for the syncer part")
    parser.add_argument("--parts", default="syncer,server,blocking", help="which parts to run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(json.loads(sys.stdin.read()))
        return
    raise_open_files_limit()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (stop children) on SIGTERM
    sizes = [1000, 10000] if args.quick else [1000, 10000, 50000]
    print(f"control-plane benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}")
    with tempfile.TemporaryDirectory(prefix="dasg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        parts = args.parts.split(",")
        if "syncer" in parts:
            bench_syncer(sizes, args.backends.split(","), tmp)
        n_groups = 10000
        with database("sqlite", tmp / "server-db") as settings:
            engine = create_engine(settings)
            upgrade(engine)
            store = PolicyStore(engine)
            rows = rows_of(make_groups(n_groups))
            store.replace(rows, cc_last_update="bench")
            metrics_port = free_port()
            server = start_policy_server(tmp / "ps", database_config(settings), workers=2, metrics_port=metrics_port)
            try:
                pids = descendants(server.daemon.pid)
                if "server" in parts:
                    bench_server(pids, server.port, tmp / "ps" / "ps-pki", n_groups, 5 if args.quick else 20)
                if "blocking" in parts:
                        bench_blocking(server.daemon.pid, metrics_port, server.port, tmp / "ps" / "ps-pki", store,
                                   rows, 1000 if args.quick else 5000)
                print("\nserver reloads: " + "; ".join(
                    f"{e['data']['security_groups']} groups in {e['data']['seconds']} s"
                    for e in server.daemon.events("dataset-loaded")[2:]))
            finally:
                server.daemon.stop()
                engine.dispose()


if __name__ == "__main__":
    main()
