"""Release tests share the release's blobs and its compiled packages, each made once per run.

- `release_blobs`: every blob of config/blobs.yml present and intact in blobs/, and the project
  wheel built from the current tree. A fresh clone has no blobs (blobs/ is not committed), and a
  code change outdates the project wheel: then scripts/release/create-blobs fetches CPython's
  source (apt) and the wheels (pip), and rewrites config/blobs.yml.
- `compiled_packages`: every package compiled as on a BOSH compilation VM (support.bosh_compile),
  dependencies first, into one packages directory standing in for /var/vcap/packages, inside an
  empty network namespace: the compile must not need the network. CPython's compile takes about
  two minutes on two cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.bosh_compile import Compiled, compile_order, compile_package
from support.env import require_root_netns, require_tools
from support.netns import netns
from support.release_layout import check_blobs

RELEASE = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def release_blobs() -> Path:
    """The release directory, with its blobs in place and current."""
    script = [sys.executable, str(RELEASE / "scripts" / "release" / "create-blobs")]
    if subprocess.run([*script, "--check"], capture_output=True, check=False, timeout=300).returncode != 0:
        result = subprocess.run(script, capture_output=True, text=True, check=False, timeout=500)
        if result.returncode != 0:
            pytest.fail(f"scripts/release/create-blobs failed:\n{result.stdout}{result.stderr}", pytrace=False)
    problems = check_blobs(RELEASE)
    assert not problems, problems
    return RELEASE


@pytest.fixture(scope="session")
def compiled_packages(release_blobs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Compiled]:
    """Every package of the release compiled offline; keyed by name (install_dir under one packages dir)."""
    require_root_netns()
    require_tools("gcc", "make", "strip", "tar")
    work = tmp_path_factory.mktemp("bosh-compile")
    packages_dir = work / "packages"
    packages_dir.mkdir()
    compiled: dict[str, Compiled] = {}
    with netns("compile") as ns:
        for name in compile_order(release_blobs):
            compiled[name] = compile_package(release_blobs, name, packages_dir, work, netns=ns)
    return compiled
