"""The syncer's wiring: skip_ssl_validation, and the example ASG file the local environment uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamic_asgs.errors import UpstreamError
from dynamic_asgs.local import examples
from dynamic_asgs.local.cc_stub.catalog import load_catalog
from dynamic_asgs.syncer.main import build_cc
from dynamic_asgs.syncer.metrics import SyncerMetrics
from dynamic_asgs.syncer.settings import load_settings
from support.daemons import InProcessStub, inprocess_stub

EXAMPLE = examples.ASGS


def settings_for(stub: InProcessStub, tmp_path: Path, *, skip: bool) -> Path:
    config = {
        "database": {"type": "sqlite", "database_name": str(tmp_path / "p.db")},
        "uaa_client": "network-policy", "uaa_client_secret": "secret", "uaa_url": stub.url, "cc_url": stub.url,
        "cc_internal_url": stub.internal_url, "cc_internal_client_cert": str(stub.pki.client.cert),
        "cc_internal_client_key": str(stub.pki.client.key), "skip_ssl_validation": skip, "metrics_port": 0,
        "connect_timeout_seconds": 2, "request_timeout_seconds": 5,
    }
    path = tmp_path / "syncer.json"
    path.write_text(json.dumps(config))
    return path


def test_skip_ssl_validation_trusts_an_unknown_ca(tmp_path: Path) -> None:
    with inprocess_stub(tmp_path, [{"name": "dns"}]) as stub:
        cc = build_cc(load_settings(settings_for(stub, tmp_path, skip=True)), SyncerMetrics())
        assert cc.last_update() is not None and len(cc.security_groups().resources) == 1
        strict = build_cc(load_settings(settings_for(stub, tmp_path, skip=False)), SyncerMetrics())
        with pytest.raises(UpstreamError, match="TLS failure"):
            strict.last_update()


def test_the_example_asg_file_has_global_running_and_staging_groups() -> None:
    groups = load_catalog(EXAMPLE, base_url="https://cc").groups
    assert any(g.running and g.staging for g in groups)
    assert any(len(g.running_spaces) == 2 for g in groups) and any(len(g.staging_spaces) == 2 for g in groups)
