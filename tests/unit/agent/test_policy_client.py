"""The agents' client against a real policy server process (mutual TLS), and against bad servers."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamic_asgs.agent.policy_client import PolicyClient
from dynamic_asgs.errors import UpstreamError
from dynamic_asgs.http.client import RetryPolicy
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from dynamic_asgs.tls import server_context
from support.daemons import PolicyServer, database_config, make_certs, start_policy_server

DNS = GroupRow("g-dns", "dns", '[{"protocol":"udp","destination":"8.8.8.8","ports":"53"}]', True, True, (), ())
BAD_RULE = ('[{"protocol":"tcp","destination":"10.0.0.300","ports":"443"},'
            '{"protocol":"all","destination":"10.9.0.0/16"}]')


def bound(i: int) -> GroupRow:
    return GroupRow(f"g-{i:04d}", f"asg-{i}", '[{"protocol":"tcp","destination":"10.0.0.5","ports":"443"}]',
                    False, False, (), (f"space-{i % 50}",))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PolicyServer, PolicyStore]]:
    tmp = tmp_path_factory.mktemp("client")
    settings = DatabaseSettings(type="sqlite", database_name=str(tmp / "p.db"))
    engine = create_engine(settings)
    upgrade(engine)
    store = PolicyStore(engine)
    store.replace([DNS, *[bound(i) for i in range(200)]], cc_last_update="t1")
    server = start_policy_server(tmp, database_config(settings), dataset_check_interval_ms=50)
    yield server, store
    server.daemon.stop()
    engine.dispose()


def client_for(server: PolicyServer, **kwargs: object) -> PolicyClient:
    cert, key = server.client_cert()
    return PolicyClient(server.url, ca_file=str(server.pki.ca.cert_path), cert_file=cert, key_file=key,
                        **kwargs)  # type: ignore[arg-type]


def test_fetch_returns_parsed_groups_etag_and_version(setup: tuple[PolicyServer, PolicyStore]) -> None:
    server, store = setup
    client = client_for(server)
    result = client.fetch(["space-1", "space-2"])
    assert not result.not_modified and result.dataset_version == store.version()
    assert [g.guid for g in result.groups] == ["g-dns", *[f"g-{i:04d}" for i in range(200) if i % 50 in (1, 2)]]
    assert result.groups[0].running_default and str(result.groups[0].rules[0].destinations[0]) == "8.8.8.8-8.8.8.8"
    again = client.fetch(["space-2", "space-1"], etag=result.etag)
    assert again.not_modified and again.groups == [] and again.etag == result.etag
    client.close()


def test_paging_and_long_space_lists_give_the_same_answer(setup: tuple[PolicyServer, PolicyStore]) -> None:
    server, _ = setup
    spaces = [f"space-{i}" for i in range(50)] + [f"unused-{i:05d}-{'x' * 30}" for i in range(3000)]
    whole = client_for(server).fetch(spaces)
    paged = client_for(server, page_size=7).fetch(spaces)
    assert len(whole.groups) == 201
    assert [g.guid for g in paged.groups] == [g.guid for g in whole.groups]


def test_blocking_fetch_returns_soon_after_a_change(setup: tuple[PolicyServer, PolicyStore]) -> None:
    server, store = setup
    client = client_for(server)
    first = client.fetch(["space-3"])
    changed = GroupRow("g-0003", "asg-3-renamed", '[]', False, False, (), ("space-3",))
    rows = [DNS, *[changed if i == 3 else bound(i) for i in range(200)]]
    threading.Timer(0.5, lambda: store.replace(rows, cc_last_update="t2")).start()
    result = client.fetch(["space-3"], etag=first.etag, wait=30)
    assert not result.not_modified
    assert "asg-3-renamed" in [g.name for g in result.groups]
    assert result.dataset_version == store.version()


def test_invalid_rules_are_dropped_not_fatal(setup: tuple[PolicyServer, PolicyStore]) -> None:
    server, store = setup
    store.replace([DNS, GroupRow("g-bad", "typo", BAD_RULE, False, False, (), ("space-x",))], cc_last_update="t3")
    time.sleep(0.3)
    groups = {g.guid: g for g in client_for(server).fetch(["space-x"]).groups}
    assert len(groups["g-bad"].rules) == 1 and len(groups["g-bad"].invalid_rules) == 1


def test_a_server_from_another_ca_is_refused(setup: tuple[PolicyServer, PolicyStore], tmp_path: Path) -> None:
    server, _ = setup
    other = make_certs(tmp_path, "other")
    client = PolicyClient(server.url, ca_file=str(other.ca.cert_path), cert_file=str(other.client.cert),
                          key_file=str(other.client.key), retry=RetryPolicy(attempts=1))
    with pytest.raises(UpstreamError, match="TLS failure"):
        client.fetch([])


class _Garbage(http.server.BaseHTTPRequestHandler):
    body = b'{"next": 0, "security_groups": [{"guid": 7}]}'

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("body", [b'{"next": 0, "security_groups": [{"guid": 7}]}', b'{"next": 0, "security_gr'])
def test_an_answer_of_the_wrong_shape_is_an_upstream_error(tmp_path: Path, body: bytes) -> None:
    pki = make_certs(tmp_path, "bad")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Garbage,), {"body": body}))
    context = server_context(ca_file=str(pki.ca.cert_path), cert_file=str(pki.server.cert),
                             key_file=str(pki.server.key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = PolicyClient(f"https://127.0.0.1:{server.server_address[1]}", ca_file=str(pki.ca.cert_path),
                              cert_file=str(pki.client.cert), key_file=str(pki.client.key))
        with pytest.raises(UpstreamError, match="policy server: GET /networking/v1/internal/security_groups"):
            client.fetch(["a"])
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_server_is_an_upstream_error_after_retries(tmp_path: Path) -> None:
    pki = make_certs(tmp_path, "x")
    client = PolicyClient("https://127.0.0.1:1", ca_file=str(pki.ca.cert_path), cert_file=str(pki.client.cert),
                          key_file=str(pki.client.key), retry=RetryPolicy(attempts=2, initial=0.01))
    with pytest.raises(UpstreamError, match="connection failed"):
        client.fetch([])


def _serve(tmp_path: Path, body: bytes) -> tuple[http.server.ThreadingHTTPServer, PolicyClient]:
    pki = make_certs(tmp_path, "hostile")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Garbage,), {"body": body}))
    context = server_context(ca_file=str(pki.ca.cert_path), cert_file=str(pki.server.cert),
                             key_file=str(pki.server.key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = PolicyClient(f"https://127.0.0.1:{server.server_address[1]}", ca_file=str(pki.ca.cert_path),
                          cert_file=str(pki.client.cert), key_file=str(pki.client.key))
    return server, client


@pytest.mark.parametrize("rules", ["[" * 100_000 + "]" * 100_000, '[{"protocol": "tcp", "ports": 1' + "0" * 5000 + "}]",
                                   '"not a list"', "[" * 10])
def test_a_group_that_cannot_be_parsed_is_dropped_alone(tmp_path: Path, rules: str) -> None:
    good = {"guid": "g-good", "name": "dns", "rules": '[{"protocol":"udp","destination":"8.8.8.8","ports":"53"}]',
            "running_default": True, "staging_default": False, "running_space_guids": [], "staging_space_guids": []}
    bad = {**good, "guid": "g-bad", "name": "deep", "rules": rules}
    server, client = _serve(tmp_path, json.dumps({"next": 0, "security_groups": [bad, good]}).encode())
    try:
        result = client.fetch(["a"])
    finally:
        server.shutdown()
        server.server_close()
    assert [g.guid for g in result.groups] == ["g-good"]
    assert len(result.dropped) == 1 and "g-bad" in result.dropped[0]
