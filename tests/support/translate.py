"""Run the translate tool in-process and load its output into a real table."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from dynamic_asgs.cli import main

# A copy of ../shared/conformance (silk-release facts), so that a clone anywhere can run the vectors.
DATA = Path(__file__).resolve().parents[1] / "data"


def translate(tmp: Path, groups: Any, container: Any, *flags: str) -> tuple[int, str, str]:
    """Run ``dynamic-asgs translate``; return (status, stdout, stderr)."""
    sg, c = tmp / "sg.json", tmp / "c.json"
    sg.write_text(json.dumps(groups))
    c.write_text(json.dumps(container))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["translate", "--security-groups", str(sg), "--container", str(c), *flags])
    return status, out.getvalue(), err.getvalue()


def internal_group(guid: str, rules: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """A policy-server API entry (rules as a JSON string)."""
    entry = {"guid": guid, "name": guid, "rules": json.dumps(rules), "staging_default": False,
             "running_default": False, "staging_space_guids": [], "running_space_guids": []}
    entry.update(kw)
    return entry


def store_entry(handle: str, space: str = "some-space", workload: str = "app", ip: str = "10.255.0.2"
                ) -> dict[str, Any]:
    return {"handle": handle, "ip": ip, "metadata": {"policy_group_id": "app-guid", "space_id": space,
                                                     "container_workload": workload}}


def strip_comments(line: str) -> str:
    """Drop our ``-m comment --comment ...`` from an ``iptables -S`` line."""
    import re

    return re.sub(r' -m comment --comment (?:"[^"]*"|\S+)', "", line)
