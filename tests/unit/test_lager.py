"""Logs are lager JSON lines; secrets never reach them."""

from __future__ import annotations

import io
import json

import pytest

from dynamic_asgs.lager import Logger, parse_level


def test_lager_shape_and_sessions() -> None:
    out = io.StringIO()
    log = Logger("vxlan-policy-agent", stream=out).session("cycle")
    log.info("container-rules-updated", {"handle": "h1", "new_rules": 3})
    log.error("restore-failed", ValueError("boom"), {"line": 7})
    first, second = (json.loads(x) for x in out.getvalue().splitlines())
    assert first["source"] == "vxlan-policy-agent"
    assert first["message"] == "vxlan-policy-agent.cycle.container-rules-updated"
    assert first["level"] == "info" and first["data"] == {"handle": "h1", "new_rules": 3}
    assert first["timestamp"].endswith("Z") and len(first["timestamp"].split(".")[1]) == 10
    assert second["level"] == "error" and second["data"] == {"line": 7, "error": "boom"}


def test_level_filtering_is_shared_and_changeable() -> None:
    out = io.StringIO()
    root = Logger("x", stream=out)
    child = root.session("s")
    child.debug("hidden")
    root.level = "debug"
    child.debug("shown")
    assert [json.loads(x)["message"] for x in out.getvalue().splitlines()] == ["x.s.shown"]


def test_secrets_are_redacted() -> None:
    out = io.StringIO()
    Logger("x", stream=out).info("config", {"client_secret": "hunter2", "database": {"password": "pw"},
                                            "uaa_client": "network-policy"})
    line = out.getvalue()
    assert "hunter2" not in line and "pw\"" not in line and "network-policy" in line


def test_levels() -> None:
    assert parse_level("WARN") == "error"
    with pytest.raises(ValueError, match="unknown log level"):
        parse_level("loud")
