"""A client-certificate holder attacks the real policy server over mutual TLS; agents keep being served.

The real ``policy-server`` process (one worker, default limits, certificates generated per
run) faces what issue 13 measured against it: heads dripped a byte a second (slow loris)
and unterminated headers streamed as fast as the network allows, heads of 1 MB and of
10,000 fields, 2,000 blocking queries from one client, integers of thousands of digits
and deeply nested bodies. Meanwhile a well-behaved agent's requests (new TLS connections,
the agent's 5 s client timeout) must all succeed; attackers are cut off with 408/431/503
or 400; the server's memory stays bounded; every refusal is counted in
``internal_requests_refused_total``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from dynamic_asgs.policydb.db import create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from dynamic_asgs.tls import client_context
from support.daemons import PolicyServer, database, database_config, free_port, start_policy_server, wait_for
from support.faults import record
from support.raw_http import Reply, parse_reply

ROUTE = "/networking/v1/internal/security_groups"
AGENT_TIMEOUT = 5.0  # the agent's policy-server client timeout
MiB = 1 << 20


@dataclass
class Served:
    server: PolicyServer
    metrics_port: int

    @property
    def port(self) -> int:
        return self.server.port

    def get(self, path: str = ROUTE, **kwargs: Any) -> requests.Response:
        """A request as an agent makes it: a new TLS connection, the agent's timeout."""
        return requests.get(self.server.url + path, verify=str(self.server.pki.ca.cert_path),
                            cert=self.server.client_cert(), timeout=AGENT_TIMEOUT, **kwargs)

    def post(self, body: bytes) -> requests.Response:
        return requests.post(self.server.url + ROUTE, data=body, verify=str(self.server.pki.ca.cert_path),
                             cert=self.server.client_cert(), timeout=AGENT_TIMEOUT)

    def context(self) -> ssl.SSLContext:
        pki = self.server.pki
        return client_context(ca_file=str(pki.ca.cert_path), cert_file=str(pki.client.cert),
                              key_file=str(pki.client.key))

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted + " "))

    def rss(self) -> int:
        """Resident memory of the server's whole process group (supervisor and workers), in bytes."""
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) != self.server.daemon.pid:
                    continue
                status = Path(f"/proc/{entry}/status").read_text()
            except (OSError, IndexError, ValueError):
                continue
            total += sum(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
        return total


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hostile")
    with database("sqlite", tmp) as db:
        engine = create_engine(db)
        upgrade(engine)
        PolicyStore(engine).replace([
            GroupRow("g1", "dns", '[{"protocol":"udp","destination":"8.8.8.8","ports":"53"}]', True, False, (), ()),
            GroupRow("g2", "db", '[{"protocol":"tcp","destination":"10.0.0.5","ports":"5432"}]', False, False, (),
                     ("space-a",))], cc_last_update=None)
        engine.dispose()
        metrics_port = free_port()
        server = start_policy_server(tmp, database_config(db), workers=1, metrics_port=metrics_port)
        try:
            yield Served(server, metrics_port)
            assert server.daemon.running(), "the policy server must survive every attack"
        finally:
            server.daemon.stop()


async def exchange(served: Served, parts: list[bytes], *, pace: float = 0.0, source: str = "127.0.0.1",
                   patience: float = 60.0) -> Reply:
    """Over mutual TLS: send ``parts`` (``pace`` s apart) while reading; return what came back before the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=served.context(),
                                                   server_hostname="127.0.0.1", local_addr=(source, 0))

    async def send() -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pace:
                await asyncio.sleep(pace)

    sender = asyncio.ensure_future(send())
    data, closed = b"", False
    try:
        async with asyncio.timeout(patience):
            while chunk := await reader.read(65536):
                data += chunk
            closed = True
    except (ConnectionError, ssl.SSLError):
        closed = True
    except TimeoutError:
        pass
    finally:
        sender.cancel()
        writer.transport.abort()
    return parse_reply(data, closed)


def in_background(work: Coroutine[Any, Any, Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``work`` on its own event loop in a thread; its result lands in the returned list."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(asyncio.run(work)), daemon=True)
    thread.start()
    return thread, out


def agent_polls_while(attack: threading.Thread, served: Served) -> list[float]:
    """An agent polling (each request must succeed within its timeout) until ``attack`` ends; the latencies."""
    latencies = []
    while attack.is_alive():
        start = time.monotonic()
        r = served.get(params={"space_guids": "space-a"})
        assert r.status_code == 200 and [g["name"] for g in r.json()["security_groups"]] == ["dns", "db"]
        latencies.append(time.monotonic() - start)
        time.sleep(0.1)
    return latencies


def request(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers]) + "\r\n\r\n").encode()


SLOW_LORIS = 50
STREAMERS = 4


async def _slow_and_streamed_heads(served: Served) -> tuple[list[Reply], list[Reply]]:
    slow = [exchange(served, [request(ROUTE)[:-2] + b"X-Slow: "] + [b"a"] * 60, pace=1.0)
            for _ in range(SLOW_LORIS)]

    async def stream() -> list[Reply]:  # an unterminated header as fast as TLS carries it, again and again
        replies = []
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            replies.append(await exchange(served, [request(ROUTE)[:-2] + b"X-Big: "] + [b"b" * 16384] * 1024))
        return replies

    slow_replies, streamed = await asyncio.gather(asyncio.gather(*slow),
                                                  asyncio.gather(*(stream() for _ in range(STREAMERS))))
    return list(slow_replies), [r for replies in streamed for r in replies]


def test_slow_and_streamed_heads_neither_stall_agents_nor_grow_memory(served: Served) -> None:
    for _ in range(3):
        served.get()
    rss_before = served.rss()
    refused_before = served.metric("internal_requests_refused_total", reason="head-timeout")
    attack, out = in_background(_slow_and_streamed_heads(served))
    latencies = agent_polls_while(attack, served)
    attack.join()
    slow, streamed = out[0]
    growth = served.rss() - rss_before
    assert [(r.status, r.closed) for r in slow] == [(408, True)] * SLOW_LORIS, "every slow loris is cut off"
    assert streamed and all((r.status, r.closed) == (431, True) for r in streamed)
    assert latencies, "the agent was served during the attack"
    assert growth < 50 * MiB, f"the server grew by {growth / MiB:.0f} MiB"
    wait_for(lambda: served.metric("internal_requests_refused_total", reason="head-timeout")
             >= refused_before + SLOW_LORIS, what="every slow loris to be counted")
    assert served.metric("internal_requests_refused_total", reason="head-too-large") >= len(streamed)
    record("policy-server-hostile", injected=SLOW_LORIS + len(streamed), bad_inputs=SLOW_LORIS + len(streamed),
           violations=0, attack="slow-and-streamed-heads", agent_requests=len(latencies),
           agent_max_seconds=round(max(latencies), 3), rss_growth_mib=round(growth / MiB, 1))


@pytest.mark.parametrize("shape", ["1 MB header", "10,000 headers", "1 MB URL"])
def test_oversized_heads_get_431_and_the_connection_closed(served: Served, shape: str) -> None:
    match shape:
        case "1 MB header":
            head = request(ROUTE, "X-Big: " + "a" * MiB)
        case "10,000 headers":
            head = request(ROUTE, *(f"X-{i}: v" for i in range(10_000)))
        case _:
            head = request(ROUTE + "?space_guids=" + "s" * MiB)
    reply = asyncio.run(exchange(served, [head[i:i + 65536] for i in range(0, len(head), 65536)]))
    assert (reply.status, reply.closed) == (431, True)
    assert served.get().status_code == 200
    record("policy-server-hostile", injected=1, bad_inputs=1, violations=0, attack=shape)


BLOCKING = 2000


async def _many_blocking_queries(served: Served, etag: str) -> list[Reply]:
    query = request(f"{ROUTE}?wait=60", f"If-None-Match: {etag}", "Connection: close")
    return list(await asyncio.gather(*(exchange(served, [query], patience=30) for _ in range(BLOCKING))))


def test_blocking_queries_from_one_client_are_bounded_and_others_still_served(served: Served) -> None:
    etag = served.get().headers["etag"]
    attack, out = in_background(_many_blocking_queries(served, etag))
    refused = wait_for(lambda: served.metric("internal_requests_refused_total",
                                             reason="client-blocking-queries-limit") >= BLOCKING - 4 and
                       served.metric("internal_requests_refused_total", reason="client-blocking-queries-limit"),
                       timeout=120, what="the queries past the client's bound to be refused")
    held = served.metric("internal_security_groups_waiting_requests")
    assert held <= 4, "one worker holds at most max_blocking_queries_per_client for one client"
    other = asyncio.run(exchange(served, [request(f"{ROUTE}?wait=1", f"If-None-Match: {etag}", "Connection: close")],
                                 source="127.0.0.2"))
    assert other.status == 304, "another client's blocking query is still held (and answered)"
    assert served.get().status_code == 200, "and plain queries are answered"
    attack.join(60)
    replies = out[0]
    refusals = [r for r in replies if r.status == 503]
    assert len(refusals) >= BLOCKING - 4 and all(r.headers.get("retry-after") == "5" for r in refusals)
    wait_for(lambda: served.metric("internal_security_groups_waiting_requests") == 0,
             what="the seats of the clients that left to be given back")
    again = asyncio.run(exchange(served, [request(f"{ROUTE}?wait=0.5", f"If-None-Match: {etag}",
                                                  "Connection: close")]))
    assert again.status == 304
    record("policy-server-hostile", injected=BLOCKING, bad_inputs=BLOCKING, violations=0,
           attack="blocking-queries", refused=int(refused), held=int(held))


@pytest.mark.parametrize(("method", "target", "named"), [
    ("GET", {"from": "1" * 5000}, "from"),
    ("GET", {"limit": "9" * 5000}, "limit"),
    ("GET", {"wait": "9" * 5000}, "wait"),
    ("POST", b'{"from": ' + b"1" * 5000 + b"}", "from"),
    ("POST", b'{"limit": ' + b"9" * 5000 + b"}", "limit"),
    ("POST", b'{"wait": ' + b"9" * 5000 + b"}", "wait"),
    ("POST", b"[" * 200_000 + b"]" * 200_000, "body"),
    ("POST", b'{"space_guids": ' + b"[" * 5000 + b"]" * 5000 + b"}", "body"),
])
def test_huge_integers_and_nested_bodies_get_400_naming_the_parameter(served: Served, method: str, target: Any,
                                                                     named: str) -> None:
    r = served.get(params=target) if method == "GET" else served.post(target)
    assert r.status_code == 400 and json.loads(r.text)["error"].startswith(f"{named}:"), r.text[:200]
    assert served.get().status_code == 200
    record("policy-server-hostile", injected=1, bad_inputs=1, violations=0, attack=f"{method}-{named}")
