"""The code base stays lint-clean (ruff) and type-checks (mypy --strict), as CI requires."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.env import require

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("tool, args", [("ruff", ["check", "src", "tests", "bench"]), ("mypy", [])])
def test_tool_is_clean(tool: str, args: list[str]) -> None:
    require((BIN / tool).exists(), f"{tool} (install the dev extra: DASG_EXTRAS=test,dev scripts/bootstrap)")
    proc = subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
