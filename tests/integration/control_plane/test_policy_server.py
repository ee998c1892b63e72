"""The policy server process: mutual TLS refusals, the health endpoint, several workers."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from support.daemons import (
    PolicyServer,
    database,
    database_config,
    make_certs,
    start_policy_server,
    wait_for,
)

ROUTE = "/networking/v1/internal/security_groups"


@pytest.fixture
def server(tmp_path: Path, sqlite_db: DatabaseSettings) -> Iterator[PolicyServer]:
    engine = create_engine(sqlite_db)
    upgrade(engine)
    PolicyStore(engine).replace([GroupRow("g", "dns", "[]", True, True, (), ())], cc_last_update=None)
    engine.dispose()
    server = start_policy_server(tmp_path, database_config(sqlite_db))
    yield server
    server.daemon.stop()


def get(server: PolicyServer, cert: tuple[str, str] | None) -> requests.Response:
    return requests.get(server.url + ROUTE, verify=str(server.pki.ca.cert_path), cert=cert, timeout=5)


def test_a_client_with_the_right_certificate_is_served(server: PolicyServer) -> None:
    r = get(server, server.client_cert())
    assert r.status_code == 200 and r.json()["security_groups"][0]["name"] == "dns"


def test_no_client_certificate_is_refused(server: PolicyServer) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        get(server, None)


def test_a_certificate_from_another_ca_is_refused(server: PolicyServer, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other", "other")
    with pytest.raises(requests.exceptions.ConnectionError):
        get(server, (str(other.client.cert), str(other.client.key)))


def test_an_expired_client_certificate_is_refused(server: PolicyServer, tmp_path: Path) -> None:
    expired = server.pki.ca.issue(tmp_path, "expired", hosts=(), server=False,
                                  valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=3),
                                  valid_for=dt.timedelta(days=1))
    with pytest.raises(requests.exceptions.ConnectionError):
        get(server, (str(expired.cert), str(expired.key)))


def test_tls_1_1_is_refused(server: PolicyServer) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(server.pki.ca.cert_path))
    context.load_cert_chain(*server.client_cert())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)), \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"GET {ROUTE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert not tls.recv(100)


def test_health_follows_the_database(tmp_path: Path) -> None:
    with database("postgres", tmp_path) as settings:
        server = start_policy_server(tmp_path, database_config(settings))
        try:
            health = f"http://127.0.0.1:{server.health_port}/health"
            r = requests.get(health, timeout=5)
            assert r.status_code == 200 and r.json() == {"healthy": True, "dataset_version": 0}
            admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE {settings.database_name} WITH (FORCE)")
            admin.dispose()
            bad = wait_for(lambda: (r := requests.get(health, timeout=5)).status_code == 503 and r.json(), what="503")
            assert bad["healthy"] is False and bad["error"].startswith("policy DB: ")
            assert get(server, server.client_cert()).status_code == 200  # the last dataset is still served
        finally:
            server.daemon.stop()
