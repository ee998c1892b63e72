"""cf-deployment v58 with this release's ops-files, for tests: the manifests an operator deploys,
the job specs the director would see, and the ports each instance group's jobs use.

- `DATA` is tests/data/cf-deployment (vendored: see its README); `OPS` the release's
  ops-files/cf-deployment/. Each of those files names the order it is applied in on an
  `# Order: -o A -o B ...` header line (`operations/...` is cf-deployment's, a bare name ours):
  `documented_order` reads it, so the order the docs give is the order the tests apply.
- `integrate(order)` is `bosh int cf-deployment.yml -o ...` (bosh_tools.gopatch).
- `spec_of(release, job)` is a job's spec: this release's from jobs/, the others' from DATA's
  job-specs/<release>-release/<job>.spec.yml, None when not vendored. `MODELLED` releases
  provide and consume every link type at stake, so a job of theirs without a spec is an error.
- `port_numbers(job, spec)` lists every port a job's properties name (listening or connecting:
  a spec does not say which), from the manifest's value or the spec's default.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from bosh_model import Job
from bosh_tools.gopatch import apply_ops_files
from release_helpers import JOBS, RELEASE, interpolate

__all__ = [
    "CFD_MANIFEST", "DATA", "MODELLED", "OPS", "STAKE", "documented_order", "integrate", "interpolated",
    "lookup", "port_numbers", "spec_of",
]

DATA = RELEASE / "tests" / "data" / "cf-deployment"
CFD_MANIFEST = DATA / "cf-deployment.yml"
OPS = RELEASE / "ops-files" / "cf-deployment"
#: Releases whose jobs provide or consume the link types at stake (their specs must all be known).
MODELLED = {"silk", "cf-networking", "garden-runc", "dynamic-asgs"}
#: Link types the integration touches: the DB, the agents' links, the CNI settings, garden's tools,
#: and the others silk's and cf-networking's jobs consume next to them.
STAKE = {"dbconn", "dynamic-asgs-db", "policy-agent", "dynamic-asgs-agent", "cni_config", "iptables", "cf_network",
         "tag_length"}
#: Other deployment-wide values an operator passes (-v) to cf-deployment.
OPERATOR_VARS = {"system_domain": "sys.example.com"}
PORT_KEY = re.compile(r"port|listen|addr|address", re.IGNORECASE)
HOST_PORT = re.compile(r"(?:^|:)(\d{1,5})$")


def documented_order(ops_file: Path) -> list[Path]:
    """The files of ``ops_file``'s `# Order:` header line, as paths."""
    lines = ops_file.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("# Order:")]
    if len(starts) != 1:
        raise AssertionError(f"{ops_file.name}: expected one '# Order:' header line, found {len(starts)}")
    text = lines[starts[0]][len("# Order:"):]
    for line in lines[starts[0] + 1:]:
        if not re.match(r"#\s+-o ", line):
            break
        text += line[1:]
    names = re.findall(r"-o (\S+)", text)
    return [DATA / name if name.startswith("operations/") else OPS / name for name in names]


def integrate(order: list[Path]) -> dict[str, Any]:
    """cf-deployment.yml with the ops-files applied in ``order`` (no interpolation)."""
    doc: dict[str, Any] = apply_ops_files(CFD_MANIFEST, *order)
    return doc


def interpolated(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with every ((var)) replaced as a config server would (fake credentials)."""
    doc: dict[str, Any] = interpolate(manifest, OPERATOR_VARS)
    return doc


@cache
def _vendored(release: str, job: str) -> dict[str, Any] | None:
    path = DATA / "job-specs" / f"{release}-release" / f"{job}.spec.yml"
    if not path.is_file():
        return None
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    return spec


def spec_of(release: str, job: str) -> dict[str, Any] | None:
    """The spec of ``job`` of ``release`` (None when it is not vendored)."""
    if release == "dynamic-asgs":
        path = JOBS / job / "spec"
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    return _vendored(release, job)


def lookup(properties: dict[str, Any], name: str) -> tuple[bool, Any]:
    """(found, value) of the dotted property ``name`` in a manifest job's nested properties."""
    node: Any = properties
    for key in name.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _ports_in(value: Any) -> set[int]:
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, int):
        return {value} if 0 < value < 65536 else set()
    if isinstance(value, str):
        match = HOST_PORT.search(value.strip())
        return {int(match.group(1))} if match and 0 < int(match.group(1)) < 65536 else set()
    if isinstance(value, list):
        return set().union(*(_ports_in(v) for v in value)) if value else set()
    return set()


def port_numbers(job: Job, spec: dict[str, Any]) -> set[int]:
    """Every port number the job's port-like properties hold (manifest value, else spec default)."""
    ports: set[int] = set()
    for name, definition in (spec.get("properties") or {}).items():
        if not PORT_KEY.search(name):
            continue
        found, value = lookup(job.properties, name)
        ports |= _ports_in(value if found else (definition or {}).get("default"))
    return ports
