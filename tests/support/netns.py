"""Uniquely named network namespaces that are always deleted, even when a test fails."""

from __future__ import annotations

import itertools
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

PREFIX = f"dasg{secrets.token_hex(2)}"  # per test process; names stay within IFNAMSIZ-1 (15)
_counter = itertools.count()


def run(cmd: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), input=input, text=True, capture_output=True, check=check, timeout=timeout)


def ns_run(ns: str, cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside namespace ``ns``."""
    return run(["ip", "netns", "exec", ns, *cmd], **kw)  # type: ignore[arg-type]


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def unique_name(tag: str = "") -> str:
    """A namespace name no other test process or earlier name of this one uses (tag shortened to 3)."""
    return f"{PREFIX}{tag[:3]}{_base36(next(_counter))}"


@contextmanager
def netns(tag: str = "") -> Iterator[str]:
    """A fresh network namespace (loopback up); deleted on exit."""
    name = unique_name(tag)
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        yield name
    finally:
        run(["ip", "netns", "del", name], check=False)


def iptables(ns: str, backend: str, version: int, *args: str, check: bool = True) -> str:
    tool = f"{'ip6tables' if version == 6 else 'iptables'}-{backend}"
    return ns_run(ns, [tool, "-w", *args], check=check).stdout


def restore(ns: str, backend: str, version: int, payload: str, *extra: str) -> subprocess.CompletedProcess[str]:
    tool = f"{'ip6tables' if version == 6 else 'iptables'}-{backend}-restore"
    return ns_run(ns, [tool, "-w", *extra], input=payload, check=False)
