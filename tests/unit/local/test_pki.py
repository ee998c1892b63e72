"""Generated certificates and the shared TLS contexts: who may talk to whom."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading
import warnings
from pathlib import Path

import pytest

from dynamic_asgs.errors import ConfigError
from dynamic_asgs.local.pki import CertificateAuthority, Issued, Pki, make_pki
from dynamic_asgs.tls import client_context, server_context


def exchange(server: ssl.SSLContext, client: ssl.SSLContext, host: str = "127.0.0.1") -> bytes:
    """One round trip over TLS between the two contexts; raises on the client side if refused."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                if tls.recv(4) == b"ping":
                    tls.sendall(b"pong")
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"ping")
            answer = tls.recv(4)
            if not answer:
                raise ssl.SSLError("connection closed by the server")
            return answer
    finally:
        thread.join(5)
        listener.close()


def ctx_for(issued: Issued, **kwargs: object) -> ssl.SSLContext:
    return client_context(ca_file=str(issued.ca), cert_file=str(issued.cert), key_file=str(issued.key),
                          **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path, name="t")


def server_ctx(pki: Pki) -> ssl.SSLContext:
    return server_context(ca_file=str(pki.ca.cert_path), cert_file=str(pki.server.cert), key_file=str(pki.server.key))


def test_keys_are_private_files(pki: Pki, tmp_path: Path) -> None:
    keys = sorted(tmp_path.glob("*.key"))
    assert [k.name for k in keys] == ["t-ca.key", "t-client.key", "t-server.key"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_mutual_tls_between_certificates_of_one_ca(pki: Pki) -> None:
    assert exchange(server_ctx(pki), ctx_for(pki.client)) == b"pong"
    assert exchange(server_ctx(pki), ctx_for(pki.client), host="localhost") == b"pong"


def test_a_client_without_certificate_is_refused(pki: Pki) -> None:
    with pytest.raises((ssl.SSLError, OSError)):
        exchange(server_ctx(pki), client_context(ca_file=str(pki.ca.cert_path)))


def test_a_client_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", name="o")
    foreign = client_context(ca_file=str(pki.ca.cert_path), cert_file=str(other.client.cert),
                             key_file=str(other.client.key))
    with pytest.raises((ssl.SSLError, OSError)):
        exchange(server_ctx(pki), foreign)


@pytest.mark.parametrize(("start", "length"), [(-3, 1), (2, 5)], ids=["expired", "not-yet-valid"])
def test_a_client_certificate_outside_its_validity_is_refused(pki: Pki, tmp_path: Path, start: int,
                                                              length: int) -> None:
    now = dt.datetime.now(dt.UTC)
    stale = pki.ca.issue(tmp_path, "stale", hosts=(), server=False, valid_from=now + dt.timedelta(days=start),
                         valid_for=dt.timedelta(days=length))
    with pytest.raises((ssl.SSLError, OSError)):
        exchange(server_ctx(pki), ctx_for(stale))


def test_the_client_checks_the_servers_name_and_ca(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        exchange(server_ctx(pki), ctx_for(pki.client), host="policy-server.example.org")
    other_ca = CertificateAuthority.create(tmp_path / "x", prefix="x")
    with pytest.raises(ssl.SSLCertVerificationError):
        exchange(server_ctx(pki), client_context(ca_file=str(other_ca.cert_path), cert_file=str(pki.client.cert),
                                                 key_file=str(pki.client.key)))
    skip = client_context(cert_file=str(pki.client.cert), key_file=str(pki.client.key), skip_verify=True)
    assert exchange(server_ctx(pki), skip, host="policy-server.example.org") == b"pong"


def test_tls_below_1_2_is_refused(pki: Pki) -> None:
    server = server_ctx(pki)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    old = ctx_for(pki.client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        exchange(server, old)


def test_missing_or_mismatched_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read CA file /nonexistent\.crt"):
        server_context(ca_file="/nonexistent.crt", cert_file=str(pki.server.cert), key_file=str(pki.server.key))
    with pytest.raises(ConfigError, match="cannot load certificate"):
        server_context(ca_file=str(pki.ca.cert_path), cert_file=str(pki.server.cert), key_file=str(pki.client.key))
    with pytest.raises(ConfigError, match="needs both a certificate and a key"):
        client_context(cert_file=str(pki.client.cert))
