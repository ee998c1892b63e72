"""Bounded requests on a real uvicorn (plain HTTP on 127.0.0.1): heads, bodies, blocking queries, 400s.

Small limits make every bound quick to reach; tests/faults/test_policy_server_hostile.py
repeats the attacks against the real policy-server process over mutual TLS with its
default limits.
"""

from __future__ import annotations

import io
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from test_api import BOUND, GLOBAL, Client, api_metrics, serving

from dynamic_asgs.lager import Logger
from dynamic_asgs.policy_server.api import RETRY_AFTER_SECONDS, ROUTE, build_app
from dynamic_asgs.policy_server.holder import DatasetHolder
from dynamic_asgs.policy_server.refusals import Throttle
from dynamic_asgs.policy_server.settings import RequestLimits
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import PolicyStore
from support.raw_http import Reply, parse_reply

LIMITS = RequestLimits(max_head_bytes=8192, max_headers=16, head_timeout=1.0, body_timeout=1.0,
                       max_blocking_queries=3, max_blocking_queries_per_client=2)


@dataclass
class Served:
    client: Client
    port: int
    log: io.StringIO

    def refusals(self) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines()]
        return [line["data"] for line in lines if line["message"].endswith(".request-refused")]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(tmp_path / "p.db")))
    upgrade(engine)
    store = PolicyStore(engine)
    store.replace([GLOBAL, BOUND], cc_last_update="t1")
    log = io.StringIO()
    logger = Logger("t", stream=log)
    holder = DatasetHolder(version=store.version, snapshot=store.snapshot, interval=0.05, logger=logger)
    try:
        with serving(build_app(holder, metrics=api_metrics(), logger=logger, limits=LIMITS)) as client:
            yield Served(client, int(client.base.rsplit(":", 1)[1]), log)
    finally:
        engine.dispose()


def exchange(port: int, parts: list[bytes], *, pace: float = 0.0, source: str = "127.0.0.1",
             patience: float = 20.0) -> Reply:
    """Send ``parts`` (``pace`` seconds apart) unless the server answers first; read until it closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=patience, source_address=(source, 0))
    data, closed = b"", False
    with sock:
        try:
            for part in parts:
                if select.select([sock], [], [], pace)[0]:
                    break
                sock.sendall(part)
            while chunk := sock.recv(65536):
                data += chunk
            closed = True
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        except TimeoutError:
            pass
    return parse_reply(data, closed)


def request(path: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: t", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("internal_requests_refused_total", {"reason": reason}) or 0.0


def test_a_head_larger_than_the_bound_gets_431_and_the_connection_closed(served: Served) -> None:
    before = refused("head-too-large")
    huge = [b"GET " + ROUTE.encode() + b" HTTP/1.1\r\nX-Big: "] + [b"a" * 1024] * 1024
    reply = exchange(served.port, huge)
    assert reply.status == 431 and reply.closed and "head larger than 8192 bytes" in json.loads(reply.body)["error"]
    assert refused("head-too-large") == before + 1
    assert served.refusals()[-1]["reason"] == "head-too-large"
    assert served.client.get(ROUTE).status_code == 200


def test_the_head_bound_is_exact_whatever_arrives_with_it(served: Served) -> None:
    def sized(total: int) -> bytes:
        bare = request(ROUTE, "Connection: close", "X-Pad: ")
        return request(ROUTE, "Connection: close", "X-Pad: " + "p" * (total - len(bare)))

    assert len(sized(8192)) == 8192
    assert exchange(served.port, [sized(8192)]).status == 200
    assert exchange(served.port, [sized(8193)]).status == 431
    assert exchange(served.port, [sized(8193) + request(ROUTE)]).status == 431


def test_too_many_header_fields_get_431(served: Served) -> None:
    reply = exchange(served.port, [request(ROUTE, *(f"X-{i}: v" for i in range(40)))])
    assert reply.status == 431 and reply.closed and "41 header fields" in json.loads(reply.body)["error"]  # with Host
    assert exchange(served.port, [request(ROUTE, "Connection: close", *(f"X-{i}: v" for i in range(10)))]
                    ).status == 200


def test_a_head_not_finished_in_time_gets_408_and_a_silent_connection_is_closed(served: Served) -> None:
    before = refused("head-timeout")
    slow = exchange(served.port, [b"GET / HTTP/1.1\r\nX-Slow: "] + [b"a"] * 100, pace=0.2)
    assert slow.status == 408 and slow.closed
    silent = exchange(served.port, [])
    assert silent.status == 408 and silent.closed
    assert refused("head-timeout") == before + 2


def test_a_head_trickled_a_byte_at_a_time_within_the_bound_is_served(served: Served) -> None:
    whole = request(ROUTE + "?space_guids=space-a", "X-Long: " + "v" * 2000, "Connection: close")
    reply = exchange(served.port, [whole[i:i + 1] for i in range(len(whole))], pace=0.0001)
    assert reply.status == 200 and [g["name"] for g in json.loads(reply.body)["security_groups"]] == ["dns", "db"]


def test_a_body_not_received_in_time_gets_408(served: Served) -> None:
    head = request(ROUTE, "Content-Length: 100", method="POST")
    reply = exchange(served.port, [head, b'{"space_guids": ['] + [b" "] * 50, pace=0.1)
    assert reply.status == 408 and reply.closed and "body not received within 1 s" in json.loads(reply.body)["error"]


@pytest.mark.parametrize(("method", "query", "body", "named"), [
    ("GET", "from=" + "1" * 5000, b"", "from"),
    ("GET", "limit=" + "9" * 5000, b"", "limit"),
    ("GET", "wait=" + "9" * 5000, b"", "wait"),
    ("POST", "", b'{"from": ' + b"1" * 5000 + b"}", "from"),
    ("POST", "", b'{"limit": ' + b"9" * 5000 + b"}", "limit"),
    ("POST", "", b'{"wait": ' + b"9" * 5000 + b"}", "wait"),
    ("POST", "", b"[" * 100_000 + b"]" * 100_000, "body"),
    ("POST", "", b'{"space_guids": ' + b"[" * 2000 + b"]" * 2000 + b"}", "body"),
    ("POST", "", b'{"space_guids": [' + b"[" * 500 + b"]" * 500 + b"]}", "space_guids"),
])
def test_huge_numbers_and_deep_nesting_get_400_naming_the_parameter(served: Served, method: str, query: str,
                                                                     body: bytes, named: str) -> None:
    before = refused("invalid-parameter")
    r = served.client.request(method, f"{ROUTE}?{query}", data=body)
    assert r.status_code == 400 and r.json()["error"].startswith(f"{named}:"), r.text[:200]
    assert refused("invalid-parameter") == before + 1


def _blocking(port: int, etag: str, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock.sendall(request(ROUTE + "?wait=30", f"If-None-Match: {etag}"))
    return sock


def test_blocking_queries_past_their_bounds_get_503_with_retry_after(served: Served) -> None:
    etag = served.client.get(ROUTE).headers["etag"]
    held = [_blocking(served.port, etag, "127.0.0.1") for _ in range(2)]
    try:
        wait_held(served, 2)
        reply = exchange(served.port, [request(ROUTE + "?wait=30", f"If-None-Match: {etag}", "Connection: close")])
        assert reply.status == 503 and reply.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert "this client has 2 blocking queries held" in json.loads(reply.body)["error"]
        held.append(_blocking(served.port, etag, "127.0.0.2"))  # another client still gets a seat
        wait_held(served, 3)
        other = exchange(served.port, [request(ROUTE + "?wait=30", f"If-None-Match: {etag}", "Connection: close")],
                         source="127.0.0.3")
        assert other.status == 503 and "this worker holds 3 blocking queries" in json.loads(other.body)["error"]
        assert served.client.get(ROUTE).status_code == 200, "queries that answer at once are still answered"
        for sock in held:
            sock.close()
        wait_held(served, 0)  # a client that goes away gives its seat back at once
        r = served.client.get(ROUTE, params={"wait": "0.2"}, headers={"If-None-Match": etag})
        assert r.status_code == 304
    finally:
        for sock in held:
            sock.close()
    reasons = {r["reason"] for r in served.refusals()}
    assert {"client-blocking-queries-limit", "blocking-queries-limit"} <= reasons


def wait_held(served: Served, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if REGISTRY.get_sample_value("internal_security_groups_waiting_requests") == count:
            return
        time.sleep(0.02)
    raise AssertionError(f"expected {count} blocking queries held")


def test_the_throttle_lets_one_line_per_interval_through_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    assert throttle.admit("a") == 0
    assert [throttle.admit("a") for _ in range(5)] == [None] * 5
    assert throttle.admit("b") == 0
    now[0] = 10.0
    assert throttle.admit("a") == 5 and throttle.admit("a") is None
