"""Security: SQL injection through ``space_guids``, loopback-only local endpoints, no secret in any log.

mTLS refusals (no certificate, another CA, an expired certificate, TLS 1.1) are proven in
tests/integration/control_plane/test_policy_server.py and not repeated here.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import upgrade
from dynamic_asgs.policydb.store import GroupRow, PolicyStore
from support.cell import cell
from support.daemons import (
    PolicyServer,
    database,
    database_config,
    start_cc_stub,
    start_policy_server,
    start_syncer,
    wait_for,
)
from support.env import require_backend
from support.faults import record
from support.stack import asg, start_agent, store_add

ROUTE = "/networking/v1/internal/security_groups"
GLOBAL = GroupRow("g-global", "dns", '[{"protocol":"udp","destination":"8.8.8.8","ports":"53"}]', True, True, (), ())
BOUND = GroupRow("g-bound", "db", '[{"protocol":"tcp","destination":"10.0.0.5","ports":"5432"}]', False, False,
                 (), ("space-a",))
INJECTIONS = [
    "' OR '1'='1", "space-a' OR 1=1 --", "x'); DROP TABLE security_groups; --", "\"; DROP TABLE security_groups; #",
    "space-a%' OR running_space_guids LIKE '%", "') UNION SELECT guid, name, rules FROM security_groups --",
    "1; UPDATE security_groups SET name='pwned'", "\\'; DELETE FROM security_groups; --", "space-a\x00' OR 1=1",
    "%", "_", "*", "space-%", "[\"space-a\"]", "$1", "?", "space-a'||'", "' AND SLEEP(3) --",
    "'; SELECT pg_sleep(3); --", "\u02bc OR 1=1 --",
]


@pytest.fixture(params=["postgres", "mariadb"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[PolicyServer, PolicyStore]]:
    with database(request.param, tmp_path) as db:
        engine = create_engine(db)
        upgrade(engine)
        store = PolicyStore(engine)
        store.replace([GLOBAL, BOUND], cc_last_update="t1")
        server = start_policy_server(tmp_path, database_config(db), workers=1)
        try:
            yield server, store
        finally:
            server.daemon.stop()
            engine.dispose()


def test_sql_injection_through_space_guids_does_nothing(served: tuple[PolicyServer, PolicyStore]) -> None:
    server, store = served
    before = store.snapshot()
    session = requests.Session()
    session.cert = server.client_cert()
    ca = str(server.pki.server.ca)  # per request: REQUESTS_CA_BUNDLE beats session.verify
    tried = 0
    for payload in INJECTIONS:
        for response in (
            session.get(server.url + ROUTE, params={"space_guids": payload}, verify=ca, timeout=10),
            session.get(server.url + ROUTE, params={"space_guids": f"space-b,{payload}"}, verify=ca, timeout=10),
            session.post(server.url + ROUTE, json={"space_guids": [payload]}, verify=ca, timeout=10),
        ):
            tried += 1
            assert response.status_code in (200, 400), (payload, response.status_code, response.text)
            if response.status_code == 200:
                guids = {g["guid"] for g in response.json()["security_groups"]}
                assert guids == {"g-global"}, f"{payload!r} must match no space: {guids}"
            else:
                assert "error" in response.json()
    assert session.get(server.url + ROUTE, params={"space_guids": "space-a"}, verify=ca, timeout=10).json()[
        "security_groups"][1]["guid"] == "g-bound"  # the query itself still works
    after = store.snapshot()
    assert (after.version, after.groups) == (before.version, before.groups)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM security_groups")).scalar_one() == 2
    assert server.daemon.running()
    session.close()
    record("sql-injection", bad_inputs=tried, violations=0)


def _non_loopback() -> list[str]:
    addrs = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))
            addrs.add(probe.getsockname()[0])
        except OSError:
            pass
    return sorted(a for a in addrs if not a.startswith("127."))


def _listeners() -> dict[int, set[str]]:
    """Listening TCP ports -> bound addresses (from /proc/net/tcp and tcp6)."""
    out: dict[int, set[str]] = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr, port = fields[1].split(":")
            raw = bytes.fromhex(addr)
            if len(raw) == 4:
                text = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                text = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out.setdefault(int(port, 16), set()).add(text)
    return out


def _refused(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=2).close()
    except OSError:
        return True
    return False


def _key_lines(*paths: Path) -> set[str]:
    """Base64 lines of private keys (any 24+ characters of them must never be logged)."""
    lines = set()
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.startswith("-----") and len(line) >= 24:
                lines.add(line[:24])
    return lines


@pytest.fixture
def pg_with_password(tmp_path: Path) -> Iterator[DatabaseSettings]:
    """A PostgreSQL database owned by a role with a password (trust auth accepts it anyway: what
    matters is that the configured password is never logged)."""
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
    role, password = f"dasg_sec_{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        with database("postgres", tmp_path) as db, admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {db.database_name} OWNER TO {role}")
            yield DatabaseSettings(type="postgres", database_name=db.database_name, user=role, password=password,
                                   host="127.0.0.1", port=5432, timeout=10)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


def test_a_full_run_logs_no_secret_and_listens_locally_only(pg_with_password: DatabaseSettings,
                                                            tmp_path: Path) -> None:
    require_backend("legacy")
    db = pg_with_password
    config = database_config(db)
    assert config["password"] == db.password
    secret = "uaa-Secret-" + uuid.uuid4().hex
    rules = [{"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "443"}]
    with cell("legacy", tmp_path) as c:
        stub = start_cc_stub(tmp_path, [asg("g", rules, running=["s1"])])
        syncer = policy = agent = None
        try:
            # The stand-in's UAA knows its own client secret; a wrong one is a 401 the syncer logs.
            wrong = start_syncer(tmp_path, stub, config, name="wrong", uaa_client_secret=secret,
                                 asg_poll_interval_seconds=1, retry_deadline_seconds=1)
            wait_for(lambda: wrong.events("sync-failed"), timeout=30, what="the refused UAA login")
            wrong.stop()
            syncer = start_syncer(tmp_path, stub, config, asg_poll_interval_seconds=1, metrics_port=0)
            wait_for(lambda: syncer.events("sync-complete"), timeout=60, what="the sync")
            policy = start_policy_server(tmp_path, config, workers=1, metrics_port=0)
            store = tmp_path / "store.json"
            c.add_container("a")
            c.hook("a")
            store_add(store, c, "a", space="s1")
            agent = start_agent(tmp_path, c, policy, store)
            wait_for(lambda: "a" in agent.status()["containers"], timeout=60, what="the agent's first cycle")
            agent.force_container("a")
            ports = {"agent force": agent.config["force_policy_poll_cycle_port"],
                     "agent debug": agent.config["debug_server_port"],
                     "agent metrics": agent.config["metrics_port"], "policy health": policy.health_port}
            listeners = _listeners()
            for what, port in ports.items():
                bound = listeners.get(port)
                assert bound == {"127.0.0.1"}, f"{what} must listen on 127.0.0.1 only: {bound}"
                for addr in _non_loopback():
                    assert _refused(addr, port), f"{what} answers on {addr}:{port}"
            assert requests.get(f"http://127.0.0.1:{policy.health_port}/health", timeout=5).status_code < 500
        finally:
            for daemon in (agent.daemon if agent else None, policy.daemon if policy else None, syncer):
                if daemon is not None:
                    daemon.stop()
            stub.daemon.stop()
    secrets = {"uaa client secret": secret, "stand-in uaa secret": "network-policy-secret",
               "db password": db.password}
    keys = _key_lines(*tmp_path.rglob("*.key"))
    assert keys, "the run must have private keys to look for"
    logs = list(tmp_path.rglob("*.log"))
    assert len(logs) >= 4
    found = []
    for log in logs:
        text = log.read_text(errors="replace")
        for what, value in secrets.items():
            for form in {value, base64.b64encode(value.encode()).decode(), json.dumps(value)[1:-1]}:
                if form in text:
                    found.append(f"{log.name}: {what}")
        found += [f"{log.name}: private key material" for line in keys if line in text]
    record("secrets-in-logs", bad_inputs=len(secrets) + len(keys), violations=len(found), log_files=len(logs))
    assert not found, found
