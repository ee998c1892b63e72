"""A hostile Cloud Controller against the syncer's real CC client (as build_cc wires it).

Redirects (off the origin or on it) are refused and never followed; bodies are read up to
a bound; a listing whose pages are too many or contradict each other is refused; a drip of
bytes ends at the listing deadline; each as a RefusedAnswer naming the bound.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.cc.client import CloudController
from dynamic_asgs.errors import Refusal, RefusedAnswer, UpstreamError
from dynamic_asgs.http import deadline
from dynamic_asgs.http.client import public_url
from dynamic_asgs.http.deadline import Deadline
from dynamic_asgs.syncer.main import build_cc
from dynamic_asgs.syncer.metrics import SyncerMetrics
from dynamic_asgs.syncer.settings import load_settings
from dynamic_asgs.tls import client_context
from support.daemons import wait_for
from support.hostile_cc import (
    GROUPS,
    LATEST,
    TOKEN,
    Drip,
    Elsewhere,
    Endless,
    HostileCC,
    Oversized,
    Raw,
    Redirect,
    cc_resource,
)


@pytest.fixture
def cc(tmp_path: Path) -> Iterator[HostileCC]:
    server = HostileCC(tmp_path / "pki", [cc_resource(f"g{i:02d}") for i in range(12)])
    yield server
    server.close()


def client(cc: HostileCC, tmp_path: Path, **extra: Any) -> CloudController:
    config = cc.syncer_config({"type": "sqlite", "database_name": str(tmp_path / "p.db")}, cc_page_size=5,
                              connect_timeout_seconds=5, request_timeout_seconds=30, **extra)
    path = tmp_path / "syncer.json"
    path.write_text(json.dumps(config))
    return build_cc(load_settings(path), SyncerMetrics())


def refusal(cc_client: CloudController) -> RefusedAnswer:
    with pytest.raises(RefusedAnswer) as info:
        cc_client.security_groups()
    return info.value


def test_pages_are_requested_by_number_whatever_host_next_names(cc: HostileCC, tmp_path: Path) -> None:
    listing = client(cc, tmp_path).security_groups()
    assert [r["guid"] for r in listing.resources] == [f"g{i:02d}" for i in range(12)]
    assert listing.pages == 3 and cc.pages == [1, 2, 3]


@pytest.fixture
def elsewhere(cc: HostileCC) -> Iterator[tuple[Elsewhere, Elsewhere]]:
    tls, plain = Elsewhere(cc.pki), Elsewhere(None)
    yield tls, plain
    tls.close()
    plain.close()


REDIRECTS = [
    (GROUPS, 302, "tls", "localhost", "/v3/security_groups?page=1"),  # another host, valid certificate
    (GROUPS, 307, "tls", "127.0.0.1", "/v3/security_groups"),  # same host, another port
    (GROUPS, 301, "plain", "127.0.0.1", "/v3/security_groups"),  # plain HTTP
    (GROUPS, 308, "same", "127.0.0.1", "/v3/security_groups_mirror"),  # same origin, another path
    (TOKEN, 307, "tls", "localhost", "/oauth/token"),  # would resend the client secret
    (LATEST, 302, "tls", "127.0.0.1", "/internal/v4/asg_latest_update"),
]


@pytest.mark.parametrize(("path", "status", "target", "host", "to"), REDIRECTS)
def test_no_redirect_is_followed(cc: HostileCC, tmp_path: Path, elsewhere: tuple[Elsewhere, Elsewhere],
                                 path: str, status: int, target: str, host: str, to: str) -> None:
    tls, plain = elsewhere
    base = {"tls": tls.url(host), "plain": plain.url(host), "same": cc.url}[target]
    cc.inject(path, Redirect(status, f"{base}{to}"))
    error = refusal(client(cc, tmp_path))
    assert error.reason is Refusal.REDIRECT
    assert f"HTTP {status} redirect to {base}{to.split('?')[0]} refused" in str(error)
    assert tls.requests == plain.requests == 0
    assert cc.hits[path] == 1  # not retried either


def test_a_redirect_target_is_named_without_its_secrets(cc: HostileCC, tmp_path: Path,
                                                        elsewhere: tuple[Elsewhere, Elsewhere]) -> None:
    cc.inject(GROUPS, Redirect(302, f"https://user:hunter2@127.0.0.1:{elsewhere[0].port}/x?token=sekrit#frag"))
    error = refusal(client(cc, tmp_path))
    assert "hunter2" not in str(error) and "sekrit" not in str(error) and "user" not in str(error)
    assert f"https://127.0.0.1:{elsewhere[0].port}/x refused" in str(error)
    assert error.url == f"{cc.url}/v3/security_groups?per_page=5&page=1"


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_past_the_bound_is_refused_without_reading_it_all(cc: HostileCC, tmp_path: Path,
                                                                 declared: bool) -> None:
    size = 64 * 1024 * 64
    cc.inject(GROUPS, Oversized(size, declared=declared))
    error = refusal(client(cc, tmp_path, cc_max_response_bytes=65536))
    assert error.reason is Refusal.RESPONSE_SIZE and error.limit == 65536
    wait_for(lambda: cc.sent, timeout=10, what="the server to notice the client left")
    assert all(sent < size for sent in cc.sent)


ENDLESS = {
    "announces-too-many-pages": (Endless(total=10**9, pages=None, size=5), Refusal.PAGES, 1),
    "total-pages-too-many": (Endless(total=15, pages=4, size=5), Refusal.PAGES, 1),
    "next-past-the-last-page": (Endless(total=15, pages=3, size=5), Refusal.PAGING, 3),
    "next-back-to-page-1": (Endless(total=15, pages=3, size=5, next_page=1), Refusal.PAGING, 1),
    "next-skips-a-page": (Endless(total=15, pages=3, size=5, next_page=3), Refusal.PAGING, 1),
    "a-page-repeated": (Endless(total=15, pages=3, size=5, fresh=False), Refusal.PAGING, 2),
    "more-groups-than-asked-for": (Endless(total=15, pages=3, size=6), Refusal.PAGING, 1),
    "pages-cannot-hold-the-total": (Endless(total=16, pages=3, size=5), Refusal.PAGING, 1),
    "no-total-pages-endless": (Endless(total=15, pages=None, size=5), Refusal.PAGING, 3),
    "totals-grow-every-page": (Endless(total=10, pages=2, size=5, step=5), Refusal.PAGING, 2),
}


@pytest.mark.parametrize("case", list(ENDLESS))
def test_a_listing_that_does_not_add_up_is_refused_at_once(cc: HostileCC, tmp_path: Path, case: str) -> None:
    fault, reason, pages = ENDLESS[case]
    cc.inject(GROUPS, fault)
    error = refusal(client(cc, tmp_path, cc_max_pages=3))
    assert error.reason is reason, error
    assert cc.pages == list(range(1, pages + 1))


@pytest.mark.parametrize(("path", "part"), [(GROUPS, "body"), (GROUPS, "headers"), (LATEST, "body"),
                                            (TOKEN, "headers")])
def test_a_drip_ends_at_the_listing_deadline(cc: HostileCC, tmp_path: Path, path: str, part: str) -> None:
    cc.inject(path, Drip(part, interval=0.05))  # far inside the 30 s read timeout
    error = refusal(client(cc, tmp_path, cc_listing_deadline_seconds=1.5))
    assert error.reason is Refusal.DEADLINE and error.limit == 1.5
    assert "within the 1.5 s deadline" in str(error)
    wait_for(lambda: cc.hangups, timeout=10, what="the client to hang up")
    cc.inject(path, None)
    assert len(client(cc, tmp_path).security_groups().resources) == 12


def test_a_handshake_that_never_comes_ends_at_the_deadline(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    context = deadline.enforce(client_context())
    try:
        with socket.create_connection(silent.getsockname()) as raw:
            raw.settimeout(None)  # no timeout at all: only the deadline ends the wait
            with deadline.scope(Deadline.after(0.3)), pytest.raises(TimeoutError):
                context.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        silent.close()


def test_a_deadline_scope_never_extends_an_outer_one() -> None:
    assert deadline.remaining() is None
    with deadline.scope(Deadline.after(1)):
        with deadline.scope(Deadline.after(100)):
            left = deadline.remaining()
            assert left is not None and left <= 1
        with deadline.scope(None):
            assert (deadline.remaining() or 0) <= 1
    assert deadline.remaining() is None


def test_deadline_sockets_without_a_scope_are_plain_ones() -> None:
    context = deadline.enforce(client_context())
    assert context.sslsocket_class is deadline.DeadlineSocket
    assert issubclass(deadline.DeadlineSocket, ssl.SSLSocket)


def test_json_nested_too_deeply_is_an_upstream_error(cc: HostileCC, tmp_path: Path) -> None:
    cc.inject(GROUPS, Raw(b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(UpstreamError, match="nested too deeply"):
        client(cc, tmp_path).security_groups()


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:pw@cc.example:9024/v3/x?token=t", "https://cc.example:9024/v3/x"),
    ("https://[::1]:8443/a", "https://[::1]:8443/a"),
    ("https://[::1/a", "(an unparsable URL)"),
])
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert public_url(url, keep_query=False) == shown
