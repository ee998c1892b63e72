"""Run the fault suite (tests/faults) and print its figures.

    .venv/bin/python bench/faults.py [-k EXPR] [--json OUT]

Every fault test records what it did through ``support.faults.record`` (a JSON line per
test in the file named by ``DASG_FAULT_FIGURES``). This script runs the suite with that
set and prints, per kind: faults injected, bad inputs tried, invariant violations found
(must be 0) and recoveries (count, median, max seconds from the fault's end to the
restored state). It exits 1 if a test failed or any violation was found.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def summarise(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Figures per kind: sums of injected/bad_inputs/violations, all recovery times, extras."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"injected": 0, "bad_inputs": 0, "violations": 0,
                                                          "recoveries": [], "runs": 0})
    for line in lines:
        kind = out[line["kind"]]
        kind["runs"] += 1
        for key in ("injected", "bad_inputs", "violations"):
            kind[key] += int(line.get(key, 0))
        kind["recoveries"].extend(line.get("recoveries", []))
        for key, value in line.items():
            if key not in ("kind", "injected", "bad_inputs", "violations", "recoveries") and isinstance(value, int):
                kind[key] = kind.get(key, 0) + value
    return dict(out)


def _table(figures: dict[str, dict[str, Any]]) -> str:
    rows = [("kind", "runs", "injected", "bad inputs", "violations", "recoveries", "median s", "max s", "extra")]
    for name, f in sorted(figures.items()):
        rec = f["recoveries"]
        extra = ", ".join(f"{k}={v}" for k, v in f.items()
                          if k not in ("runs", "injected", "bad_inputs", "violations", "recoveries"))
        rows.append((name, str(f["runs"]), str(f["injected"]), str(f["bad_inputs"]), str(f["violations"]),
                     str(len(rec)), f"{statistics.median(rec):.3f}" if rec else "-",
                     f"{max(rec):.3f}" if rec else "-", extra))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
                     for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="pytest -k expression (default: the whole suite)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dasg-faults-") as tmp:
        figures_file = Path(tmp) / "figures.jsonl"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "faults")]
        if args.k:
            cmd += ["-k", args.k]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "DASG_FAULT_FIGURES": str(figures_file)},
                              capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        lines = [json.loads(x) for x in figures_file.read_text().splitlines()] if figures_file.exists() else []
    figures = summarise(lines)
    totals = {key: sum(f[key] for f in figures.values()) for key in ("injected", "bad_inputs", "violations")}
    recoveries = [r for f in figures.values() for r in f["recoveries"]]
    print(_table(figures))
    print()
    print(f"faults injected: {totals['injected']}   bad inputs tried: {totals['bad_inputs']}   "
          f"invariant violations: {totals['violations']}   recoveries: {len(recoveries)}"
          + (f" (median {statistics.median(recoveries):.3f} s, max {max(recoveries):.3f} s)" if recoveries else ""))
    print(f"pytest: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else '(no output)'}"
          f" in {seconds:.0f} s wall")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "totals": totals, "seconds": round(seconds, 1),
                                         "pytest_returncode": proc.returncode}, indent=2))
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
        print(proc.stderr[-2000:], file=sys.stderr)
    return 1 if proc.returncode != 0 or totals["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
