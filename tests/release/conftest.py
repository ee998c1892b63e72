"""Release tests share the release's blobs and its compiled packages, each made once per run.

- `release_blobs`: a temporary copy of the release (tests never change the working tree) with
  every blob of config/blobs.yml present and intact in blobs/ and matching pyproject.toml's pins.
  The blobs are hard-linked from the tree's blobs/ when it has them; a fresh clone has none
  (blobs/ is not committed), and a dependency change outdates them: then the copy's
  scripts/release/create-blobs fetches CPython's source (apt) and the wheels (pip) into the copy.
  The project's own code needs no blob (packages/dynamic-asgs takes it from src/).
- `compiled_packages`: every package compiled as on a BOSH compilation VM (bosh_tools.compile),
  dependencies first, into one packages directory standing in for /var/vcap/packages, inside an
  empty network namespace: the compile must not need the network. CPython's compile takes about
  two minutes on two cores. The packages directory is world-traversable (pytest's temporary
  directories are 0700), so jobs can run them as an unprivileged user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bosh_tools.compile import Compiled, compile_order, compile_package
from bosh_tools.release_layout import check_blobs

from support.env import require_root_netns, require_tools
from support.netns import netns

RELEASE = Path(__file__).resolve().parents[2]


COPIED = ("config", "jobs", "manifests", "ops-files", "packages", "scripts", "src")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def _copy_release(target: Path) -> Path:
    for name in COPIED:
        shutil.copytree(RELEASE / name, target / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(RELEASE / name, target / name)
    if (RELEASE / "blobs").is_dir():
        shutil.copytree(RELEASE / "blobs", target / "blobs", copy_function=_link_or_copy)
    return target


@pytest.fixture(scope="session")
def release_blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the release directory, with its blobs in place and current."""
    release = _copy_release(tmp_path_factory.mktemp("release") / "dynamic-asgs")
    script = [sys.executable, str(release / "scripts" / "release" / "create-blobs")]
    if subprocess.run([*script, "--check"], capture_output=True, check=False, timeout=300).returncode != 0:
        result = subprocess.run(script, capture_output=True, text=True, check=False, timeout=500)
        if result.returncode != 0:
            pytest.fail(f"scripts/release/create-blobs failed:\n{result.stdout}{result.stderr}", pytrace=False)
    problems = check_blobs(release)
    assert not problems, problems
    return release


@pytest.fixture(scope="session")
def compiled_packages(release_blobs: Path) -> Iterator[dict[str, Compiled]]:
    """Every package of the release compiled offline; keyed by name (install_dir under one packages dir)."""
    require_root_netns()
    require_tools("gcc", "make", "strip", "tar")
    work = Path(tempfile.mkdtemp(prefix="dasg-bosh-compile-"))
    try:
        work.chmod(0o755)
        packages_dir = work / "packages"
        packages_dir.mkdir()
        compiled: dict[str, Compiled] = {}
        with netns("compile") as ns:
            for name in compile_order(release_blobs):
                compiled[name] = compile_package(release_blobs, name, packages_dir, work, netns=ns)
        yield compiled
    finally:
        shutil.rmtree(work, ignore_errors=True)
