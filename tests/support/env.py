"""What this machine can do, and the CI rule: in CI a missing capability fails, never skips."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip (on a user's machine) or fail (in CI) when ``condition`` is false."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide {what}; .ci/run installs it", pytrace=False)
    pytest.skip(f"this machine lacks {what} (CI provides it)")


def is_root() -> bool:
    return os.geteuid() == 0


def require_root_netns() -> None:
    """Root and the `ip` tool: needed to create network namespaces."""
    require(is_root(), "root (to create network namespaces)")
    require(shutil.which("ip") is not None, "iproute2's `ip`")


def require_tools(*tools: str) -> None:
    for tool in tools:
        require(shutil.which(tool) is not None, f"the `{tool}` command")


IPTABLES_BACKENDS = ("legacy", "nft")


def require_backend(backend: str) -> None:
    require_root_netns()
    require_tools(f"iptables-{backend}", f"iptables-{backend}-restore", f"ip6tables-{backend}-restore")
