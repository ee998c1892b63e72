"""The entry point lists every daemon and tool."""

from __future__ import annotations

import subprocess
import sys

from dynamic_asgs.cli import COMMANDS


def test_help_lists_one_subcommand_per_daemon_and_tool() -> None:
    proc = subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for name in ("policy-server", "policy-server-asg-syncer", "vxlan-policy-agent", "netmon", "translate"):
        assert name in COMMANDS
        assert f"    {name}" in proc.stdout


def test_unknown_subcommand_is_refused() -> None:
    proc = subprocess.run([sys.executable, "-m", "dynamic_asgs.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
