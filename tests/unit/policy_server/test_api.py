"""The internal API app (Starlette) over a real SQLite store: answers, 400s, ETags, blocking queries."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from starlette.applications import Starlette
from uvicorn import Config, Server

from dynamic_asgs.lager import Logger
from dynamic_asgs.policy_server.api import ROUTE, ApiMetrics, build_app
from dynamic_asgs.policy_server.guard import GuardedHttpToolsProtocol
from dynamic_asgs.policy_server.holder import DatasetHolder
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore

GLOBAL = GroupRow("g-dns", "dns", '[{"protocol":"udp","destination":"8.8.8.8","ports":"53"}]', True, True, (), ())
BOUND = GroupRow("g-db", "db", '[{"protocol":"tcp","destination":"10.0.0.5","ports":"5432"}]', False, False,
                 ("space-b",), ("space-a",))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PolicyStore]:
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(tmp_path / "p.db")))
    upgrade(engine)
    store = PolicyStore(engine)
    store.replace([GLOBAL, BOUND], cc_last_update="t1")
    yield store
    engine.dispose()


class Client:
    """requests against the app served by a real uvicorn (plain HTTP on 127.0.0.1) in a thread."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()

    def request(self, method: str, path: str, **kwargs: object) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=60, **kwargs)  # type: ignore[arg-type]

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: object) -> requests.Response:
        return self.request("POST", path, **kwargs)


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[Client]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Server(Config(app, log_config=None, lifespan="on", loop="uvloop", http=GuardedHttpToolsProtocol,
                           proxy_headers=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert server.started, "uvicorn did not start"
        client = Client(f"http://127.0.0.1:{sock.getsockname()[1]}")
        yield client
        client.session.close()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def client(store: PolicyStore) -> Iterator[Client]:
    holder = DatasetHolder(version=store.version, snapshot=store.snapshot, interval=0.05,
                           logger=Logger("t", stream=io.StringIO()))
    with serving(build_app(holder, metrics=api_metrics(), logger=Logger("t", stream=io.StringIO()))) as client:
        yield client


API_METRICS: list[ApiMetrics] = []


def api_metrics() -> ApiMetrics:
    if not API_METRICS:  # prometheus metrics register once per process
        API_METRICS.append(ApiMetrics())
    return API_METRICS[0]


def names(response: requests.Response) -> list[str]:
    return [g["name"] for g in response.json()["security_groups"]]


def test_answers_carry_the_groups_an_etag_and_the_dataset_version(client: Client) -> None:
    r = client.get(ROUTE, params={"space_guids": "space-a"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert names(r) == ["dns", "db"]
    assert r.headers["x-dataset-version"] == "1" and r.headers["etag"].startswith('"')
    assert names(client.get(ROUTE)) == ["dns"]


def test_if_none_match_gives_304_until_the_answer_changes(client: Client, store: PolicyStore) -> None:
    etag = client.get(ROUTE, params={"space_guids": "space-a"}).headers["etag"]
    r = client.get(ROUTE, params={"space_guids": "space-a"}, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    first_change = float(r.headers["x-dataset-changed-at"])
    before = time.time()
    store.replace([GLOBAL, BOUND, GroupRow("g-other", "other", "[]", False, False, (), ("space-z",))],
                  cc_last_update="t2")
    time.sleep(0.3)  # let the worker notice version 2
    r = client.get(ROUTE, params={"space_guids": "space-a"}, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.headers["x-dataset-version"] == "2"  # unrelated change
    changed_at = float(r.headers["x-dataset-changed-at"])  # when version 2 was written, for lag reports
    assert first_change < changed_at and before - 0.01 <= changed_at <= time.time()
    store.replace([GLOBAL], cc_last_update="t3")
    time.sleep(0.3)
    r = client.get(ROUTE, params={"space_guids": "space-a"}, headers={"If-None-Match": etag})
    assert r.status_code == 200 and names(r) == ["dns"]


def test_a_blocking_query_returns_when_its_answer_changes(client: Client, store: PolicyStore) -> None:
    etag = client.get(ROUTE, params={"space_guids": "space-a"}).headers["etag"]
    threading.Timer(0.5, lambda: store.replace([GLOBAL], cc_last_update="t2")).start()
    r = client.get(ROUTE, params={"space_guids": "space-a", "wait": "30"}, headers={"If-None-Match": etag})
    assert r.status_code == 200 and names(r) == ["dns"] and r.headers["x-dataset-version"] == "2"


def test_a_blocking_query_ends_with_304_when_nothing_changes(client: Client) -> None:
    etag = client.get(ROUTE).headers["etag"]
    r = client.get(ROUTE, params={"wait": "0.3"}, headers={"If-None-Match": etag})
    assert r.status_code == 304


def test_post_takes_the_space_list_in_the_body(client: Client) -> None:
    spaces = [f"space-{i}" for i in range(5000)] + ["space-b"]
    r = client.post(ROUTE, data=json.dumps({"space_guids": spaces}))
    assert r.status_code == 200 and names(r) == ["dns", "db"]
    assert client.get(ROUTE, params={"space_guids": "space-b"}).headers["etag"] == r.headers["etag"]


@pytest.mark.parametrize(("method", "kwargs", "error"), [
    ("GET", {"params": {"limit": "x"}}, "limit: 'x' is not a non-negative integer"),
    ("GET", {"params": {"wait": "600"}}, "wait: must be between 0 and 60 seconds"),
    ("POST", {"data": b"not json"}, "body: not valid JSON"),
])
def test_bad_parameters_get_400_with_a_json_error(client: Client, method: str, kwargs: dict[str, object],
                                                  error: str) -> None:
    r = client.request(method, ROUTE, **kwargs)
    assert r.status_code == 400
    assert error in r.json()["error"]


def test_503_until_a_dataset_could_be_loaded(tmp_path: Path) -> None:
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(tmp_path / "empty.db")))
    store = PolicyStore(engine)  # not migrated: the version query fails
    log = io.StringIO()
    holder = DatasetHolder(version=store.version, snapshot=store.snapshot, interval=0.05,
                           logger=Logger("t", stream=log))
    try:
        with serving(build_app(holder, metrics=api_metrics(), logger=Logger("t", stream=log))) as client:
            r = client.get(ROUTE)
            assert r.status_code == 503 and "not loaded" in r.json()["error"]
            upgrade(engine)
            time.sleep(0.3)
            assert client.get(ROUTE).status_code == 200
    finally:
        engine.dispose()
    events = [json.loads(line)["message"] for line in log.getvalue().splitlines()]
    assert "t.dataset-check-failed" in events and "t.dataset-check-recovered" in events
