"""The syncer's configuration: Go keys accepted, bad keys named, exit 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dynamic_asgs.errors import ConfigError
from dynamic_asgs.syncer.settings import load_settings

GO_CONFIG = {  # as cf-networking-release's policy-server-asg-syncer.json.erb renders it
    "uuid": "6f3c0f6e-1b2a-4c3d-9e8f-0123456789ab",
    "database": {"user": "u", "type": "mysql", "password": "p", "port": 3306, "database_name": "policy",
                 "host": "db.service.cf.internal", "timeout": 120, "require_ssl": False, "ca_cert": "/x/ca.crt",
                 "skip_hostname_validation": False},
    "uaa_client": "network-policy", "uaa_client_secret": "s", "uaa_url": "https://uaa.service.cf.internal",
    "uaa_port": 8443, "uaa_ca": "/x/uaa_ca.crt", "cc_url": "https://cloud-controller-ng.service.cf.internal:9024",
    "cc_internal_url": "https://cloud-controller-ng.service.cf.internal:9023", "cc_ca_cert": "/x/cc_ca.crt",
    "log_prefix": "cfnetworking", "log_level": "info", "metron_address": "127.0.0.1:3457",
    "skip_ssl_validation": False, "asg_poll_interval_seconds": 60, "retry_deadline_seconds": 300,
    "locket_address": "locket.service.cf.internal:8891", "locket_ca_cert_file": "/x/locket_ca.crt",
    "locket_client_cert_file": "/x/locket.crt", "locket_client_key_file": "/x/locket.key",
}


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "syncer.json"
    path.write_text(json.dumps(config))
    return path


def test_the_go_jobs_config_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GO_CONFIG))
    assert settings.uaa_url == "https://uaa.service.cf.internal:8443"
    assert settings.holder == GO_CONFIG["uuid"]
    assert (settings.poll_interval, settings.retry_deadline, settings.lease_ttl) == (60, 300, 15)
    assert settings.database.type == "mysql" and settings.database.timeout == 120
    assert (settings.max_pages, settings.max_response_bytes, settings.listing_deadline) == (20, 64 * 2**20, 300)


@pytest.mark.parametrize(("change", "message"), [
    ({"asg_poll_interval_seconds": 0}, "$.asg_poll_interval_seconds: 0 is less than the minimum of 1"),
    ({"cc_url": "cloud-controller"}, "$.cc_url: 'cloud-controller' does not match"),
    ({"cc_url": "http://cloud-controller-ng.service.cf.internal:9022"}, "$.cc_url: 'http://cloud-controller-ng"),
    ({"uaa_url": "https://admin:pw@uaa.service.cf.internal"}, "$.uaa_url: 'https://admin:pw@uaa"),
    ({"cc_max_pages": 0}, "$.cc_max_pages: 0 is less than the minimum of 1"),
    ({"cc_max_response_bytes": 1000}, "$.cc_max_response_bytes: 1000 is less than the minimum of 65536"),
    ({"cc_listing_deadline_seconds": 0}, "$.cc_listing_deadline_seconds: 0 is less than or equal to the minimum"),
    ({"poll_intervall": 5}, "$: unknown key(s) 'poll_intervall'"),
    ({"database": {"type": "oracle", "database_name": "x"}}, "$.database.type: 'oracle' is not one of"),
    ({"database": {"type": "postgres", "database_name": "x"}}, "$.database.host: is required for type 'postgres'"),
    ({"cc_internal_client_cert": "/x/c.crt"}, "$.cc_internal_client_cert: needs cc_internal_client_key"),
])
def test_bad_keys_are_named(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, {**GO_CONFIG, **change}))
    assert message in str(info.value)


def test_the_daemon_exits_2_on_bad_configuration(tmp_path: Path) -> None:
    config = {**GO_CONFIG, "database": {"type": "sqlite", "database_name": str(tmp_path / "p.db")},
              "uaa_ca": str(tmp_path / "missing-ca.crt")}
    proc = subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "policy-server-asg-syncer", "--config-file",
                           str(write(tmp_path, config))], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"cannot read CA file {tmp_path / 'missing-ca.crt'}" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
