"""Configuration loading: defaults filled, errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamic_asgs.config import load_config
from dynamic_asgs.errors import ConfigError

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["policy_server_url"],
    "properties": {
        "policy_server_url": {"type": "string"},
        "asg_poll_interval": {"type": "integer", "minimum": 1, "default": 60},
        "deny_networks": {"type": "object", "default": {},
                          "properties": {"always": {"type": "array", "default": []}}},
    },
}


def write(tmp: Path, text: str) -> Path:
    path = tmp / "c.json"
    path.write_text(text)
    return path


def test_defaults_are_filled(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '{"policy_server_url": "https://x:4003"}'), SCHEMA)
    assert cfg == {"policy_server_url": "https://x:4003", "asg_poll_interval": 60, "deny_networks": {"always": []}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "c.json: not valid JSON: line 1 column 2"),
        ("{}", "c.json: $: 'policy_server_url' is required"),
        ('{"policy_server_url": "u", "asg_poll_interval": 0}', "c.json: $.asg_poll_interval: 0 is less than"),
        ('{"policy_server_url": "u", "asg_poll_intervall": 5}', "c.json: $: unknown key(s) 'asg_poll_intervall'"),
        ('{"policy_server_url": "u", "deny_networks": {"always": "x"}}', "$.deny_networks.always: 'x' is not"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), SCHEMA)
    assert message in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration: No such file"):
        load_config(tmp_path / "missing.json", SCHEMA)
