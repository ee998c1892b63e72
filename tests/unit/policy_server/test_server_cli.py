"""The policy server's configuration and its --migrate-only mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.errors import ConfigError
from dynamic_asgs.local.pki import make_pki
from dynamic_asgs.policy_server.settings import RequestLimits, load_settings
from dynamic_asgs.policydb.db import DatabaseSettings, create_engine
from dynamic_asgs.policydb.migrate import current_revision, head_revision

GO_CONFIG = {  # as cf-networking-release's policy-server-internal.json.erb renders it
    "listen_host": "0.0.0.0", "log_prefix": "cfnetworking", "debug_server_host": "127.0.0.1",
    "debug_server_port": 31945, "health_check_port": 31946, "internal_listen_port": 4003,
    "database": {"user": "u", "type": "postgres", "password": "p", "port": 5524, "database_name": "network_policy",
                 "host": "10.0.0.5", "timeout": 120, "require_ssl": False, "ca_cert": "/x/database_ca.crt",
                 "skip_hostname_validation": False, "client_cert": "/x/db_client.crt", "client_key": "/x/db.key"},
    "max_idle_connections": 200, "max_open_connections": 200, "connections_max_lifetime_seconds": 3600,
    "tag_length": 3, "metron_address": "127.0.0.1:3457", "log_level": "info",
    "enforce_experimental_dynamic_egress_policies": False, "ca_cert_file": "/x/ca.crt",
    "server_cert_file": "/x/server.crt", "server_key_file": "/x/server.key", "request_timeout": 5,
}


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "policy-server.json"
    path.write_text(json.dumps(config))
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "policy-server", *args], capture_output=True,
                          text=True, timeout=60)


def test_the_go_jobs_config_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GO_CONFIG))
    assert (settings.listen_host, settings.port, settings.health_port) == ("0.0.0.0", 4003, 31946)
    assert settings.database.client_cert == "/x/db_client.crt" and settings.workers == 2
    assert settings.check_interval == 0.5 and settings.pool_size == 3


def test_request_limits_default_to_the_documented_bounds_and_can_be_set(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, GO_CONFIG)).limits == RequestLimits()
    custom = {"max_request_head_bytes": 8192, "max_request_headers": 32, "request_head_timeout_seconds": 2.5,
              "request_body_timeout_seconds": 7, "max_blocking_queries": 50, "max_blocking_queries_per_client": 2}
    assert load_settings(write(tmp_path, {**GO_CONFIG, **custom})).limits == RequestLimits(
        max_head_bytes=8192, max_headers=32, head_timeout=2.5, body_timeout=7.0, max_blocking_queries=50,
        max_blocking_queries_per_client=2)


@pytest.mark.parametrize(("change", "message"), [
    ({"max_request_head_bytes": 100}, "$.max_request_head_bytes: 100 is less than the minimum of 4096"),
    ({"internal_listen_port": 70000}, "$.internal_listen_port: 70000 is greater than the maximum of 65535"),
    ({"workers": 0}, "$.workers: 0 is less than the minimum of 1"),
    ({"listen_port": 8080}, "$: unknown key(s) 'listen_port'"),
])
def test_bad_keys_are_named(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, {**GO_CONFIG, **change}))
    assert message in str(info.value)


def test_missing_certificates_exit_2(tmp_path: Path) -> None:
    config = {**GO_CONFIG, "database": {"type": "sqlite", "database_name": str(tmp_path / "p.db")}}
    proc = run("--config-file", str(write(tmp_path, config)))
    assert proc.returncode == 2
    assert "cannot read /x/server.crt: no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_migrate_only(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, name="ps")
    db = tmp_path / "p.db"
    config = {**GO_CONFIG, "database": {"type": "sqlite", "database_name": str(db)},
              "ca_cert_file": str(pki.ca.cert_path), "server_cert_file": str(pki.server.cert),
              "server_key_file": str(pki.server.key)}
    proc = run("--config-file", str(write(tmp_path, config)), "--migrate-only")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["data"] == {"from": None, "to": head_revision()}
    engine = create_engine(DatabaseSettings(type="sqlite", database_name=str(db)))
    assert current_revision(engine) == head_revision()
    engine.dispose()
