"""Compile a release's packages as a BOSH compilation VM does, in a sandbox directory, for tests.

Goals: the packages' `packaging` scripts are exercised exactly as the BOSH agent runs them, so a
package that compiles here compiles on a compilation VM with the same stemcell packages; the
compiled packages can then back jobs laid out by bosh_tools.vcap_root.

Mechanisms (the agent's compile step):
- The package's source is assembled in a fresh BOSH_COMPILE_TARGET: every file its spec's
  `files` globs match in the release's src/ or blobs/ (minus its `excluded_files` globs), at its
  path relative to that directory, plus the `packaging` script.
- `bash -x packaging` runs there with the agent's isolated environment: only BOSH_COMPILE_TARGET,
  BOSH_INSTALL_TARGET (<packages_dir>/<name>), BOSH_PACKAGE_NAME, BOSH_PACKAGES_DIR and
  PATH=/usr/local/bin:/usr/bin:/bin. Compiled dependencies are found at
  ${BOSH_PACKAGES_DIR}/<dependency>, as at /var/vcap/packages/<dependency> on the VM, so packages
  are compiled in dependency order into one packages directory.
- Optionally inside a network namespace (support.netns), to prove the compile needs no network.
- The script's output goes to compile.log beside the compile target; a failure raises with its tail.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["CompileError", "Compiled", "compile_order", "compile_package"]

AGENT_PATH = "/usr/local/bin:/usr/bin:/bin"


class CompileError(Exception):
    """A packaging script failed (the message ends with the end of its log)."""


@dataclass(frozen=True)
class Compiled:
    name: str
    install_dir: Path
    seconds: float
    log: Path


def _spec(release: Path, name: str) -> dict[str, object]:
    spec = yaml.safe_load((release / "packages" / name / "spec").read_text())
    assert isinstance(spec, dict), f"packages/{name}/spec is not a mapping"
    return spec


def compile_order(release: Path, names: list[str] | None = None) -> list[str]:
    """``names`` (default: every package) and their dependencies, dependencies first."""
    wanted = names if names is not None else sorted(p.name for p in (release / "packages").iterdir() if p.is_dir())
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in _spec(release, name).get("dependencies") or []:  # type: ignore[union-attr]
            visit(str(dep))
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def _assemble(release: Path, name: str, target: Path) -> None:
    spec = _spec(release, name)
    excluded = {rel for pattern in spec.get("excluded_files") or []  # type: ignore[union-attr]
                for base in (release / "src", release / "blobs") if base.is_dir()
                for rel in glob.glob(str(pattern), root_dir=base, recursive=True)}
    for pattern in spec.get("files") or []:  # type: ignore[union-attr]
        matched = False
        for base in (release / "src", release / "blobs"):
            for rel in glob.glob(str(pattern), root_dir=base, recursive=True) if base.is_dir() else []:
                if (base / rel).is_file() and rel not in excluded:
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(base / rel, target / rel)
                    matched = True
        if not matched:
            raise CompileError(f"packages/{name}/spec: missing files for pattern '{pattern}'")
    shutil.copy2(release / "packages" / name / "packaging", target / "packaging")


def compile_package(release: Path, name: str, packages_dir: Path, work_dir: Path, *,
                    netns: str | None = None, timeout: float = 1800) -> Compiled:
    """Compile package ``name`` into <packages_dir>/<name>; its dependencies must be there already."""
    target, install = work_dir / f"compile-{name}", packages_dir / name
    log = work_dir / f"compile-{name}.log"
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(install, ignore_errors=True)
    target.mkdir(parents=True)
    install.mkdir(parents=True)
    _assemble(release, name, target)
    env = [f"BOSH_COMPILE_TARGET={target}", f"BOSH_INSTALL_TARGET={install}", f"BOSH_PACKAGE_NAME={name}",
           f"BOSH_PACKAGES_DIR={packages_dir}", f"PATH={AGENT_PATH}"]
    cmd = ["env", "-i", *env, "bash", "-x", "packaging"]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    started = time.monotonic()
    with log.open("wb") as out:
        result = subprocess.run(cmd, cwd=target, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                check=False, timeout=timeout)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise CompileError(f"packages/{name}/packaging failed (exit {result.returncode}); end of {log}:\n{tail}")
    shutil.rmtree(target, ignore_errors=True)  # the agent discards the compile target too
    return Compiled(name=name, install_dir=install, seconds=seconds, log=log)
