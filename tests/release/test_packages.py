"""Release smoke test: the packages' scripts compile as on a BOSH compilation VM, offline, and work.

`compiled_packages` (conftest) compiles python3 from the CPython source blob, then dynamic-asgs
from the wheel blobs and the release's src/ against it, in an empty network namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from bosh_tools.compile import Compiled, CompileError, compile_package

from dynamic_asgs.local import examples
from support.env import require_root_netns
from support.netns import netns

pytestmark = pytest.mark.slow

RELEASE = Path(__file__).resolve().parents[2]


def run(*cmd: str | Path, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(c) for c in cmd]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, stdin=subprocess.DEVNULL)


def test_python3_is_a_static_cpython_311_with_the_needed_modules(compiled_packages: dict[str, Compiled]) -> None:
    python = compiled_packages["python3"].install_dir / "bin" / "python3"
    probe = ("import sys, ssl, sqlite3, ctypes, zlib, bz2, lzma, readline, uuid, hashlib, json;"
             "print(json.dumps({'version': sys.version_info[:2], 'prefix': sys.prefix, 'ssl': ssl.OPENSSL_VERSION,"
             " 'zlib': zlib.compress(b'x') != b'', 'sqlite': sqlite3.connect(':memory:').execute('select 1')"
             ".fetchone()[0], 'sha256': hashlib.sha256(b'').hexdigest()[:8]}))")
    result = run(python, "-c", probe)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["version"] == [3, 11]
    assert info["prefix"] == str(compiled_packages["python3"].install_dir)
    assert info["ssl"].startswith("OpenSSL") and info["sqlite"] == 1 and info["sha256"] == "e3b0c442"
    assert "libpython" not in run("ldd", python).stdout, "the interpreter is linked statically"
    lib = compiled_packages["python3"].install_dir / "lib"
    assert not (lib / "python3.11" / "test").exists(), "no test suite in the package"
    assert not list(lib.rglob("libpython3.11.a")), "no static archive in the package"
    assert run(compiled_packages["python3"].install_dir / "bin" / "python3", "-m", "pip", "--version").returncode == 0


def test_dynamic_asgs_runs_offline_from_its_virtualenv(compiled_packages: dict[str, Compiled]) -> None:
    require_root_netns()
    venv = compiled_packages["dynamic-asgs"].install_dir
    with netns("run") as ns:
        result = run(venv / "bin" / "dynamic-asgs", "--help", ns=ns)
        assert result.returncode == 0, result.stderr
        assert "usage: dynamic-asgs" in result.stdout
        imports = "import dynamic_asgs, psycopg, cryptography.x509, grpc, yaml, sqlalchemy, pymysql, uvicorn, alembic"
        result = run(venv / "bin" / "python", "-c", f"{imports}; print(psycopg.pq.__impl__)", ns=ns)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "binary", "psycopg uses the manylinux binary wheel"
    config = (venv / "pyvenv.cfg").read_text()
    assert f"home = {compiled_packages['python3'].install_dir / 'bin'}" in config


def test_translate_works_from_the_package(compiled_packages: dict[str, Compiled]) -> None:
    venv = compiled_packages["dynamic-asgs"].install_dir
    result = run(venv / "bin" / "dynamic-asgs", "translate", "--security-groups", examples.SECURITY_GROUPS,
                 "--container", examples.CONTAINER, "--family", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "*filter" in lines and "COMMIT" in lines
    assert any(line.startswith("-A netout--") for line in lines)


def test_the_blobs_pinned_versions_are_installed(compiled_packages: dict[str, Compiled]) -> None:
    venv = compiled_packages["dynamic-asgs"].install_dir
    listing = run(venv / "bin" / "python", "-m", "pip", "list", "--format=json", "--disable-pip-version-check")
    installed = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(listing.stdout)}
    pins = tomllib.loads((RELEASE / "pyproject.toml").read_text())["project"]["dependencies"]
    for pin in pins:
        name, version = pin.split("==")
        name = name.split("[")[0].lower().replace("_", "-")
        assert installed.get(name) == version, f"{pin}: installed {installed.get(name)}"
    wheels = sorted((RELEASE / "blobs" / "dynamic-asgs" / "wheels").glob("*.whl"))
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        assert installed.get(name.lower().replace("_", "-")) == version, f"blob {wheel.name} not installed"


def test_packaging_failures_say_what_is_missing(release_blobs: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    for sub in ("packages", "config", "src"):
        shutil.copytree(release_blobs / sub, release / sub)
    (release / "blobs" / "python3").mkdir(parents=True)
    (release / "blobs" / "python3" / "Python-3.11.0.tgz").write_bytes(b"")
    (release / "blobs" / "python3" / "Python-3.11.1.tgz").write_bytes(b"")
    packages, work = tmp_path / "packages", tmp_path / "work"
    packages.mkdir()
    with pytest.raises(CompileError, match=r"expected exactly one python3/Python-3\.11\.\*\.tgz blob"):
        compile_package(release, "python3", packages, work)
    wheels = release / "blobs" / "dynamic-asgs" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "dynamic_asgs-0.1.0-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(CompileError, match=r"dynamic_asgs-0\.1\.0-py3-none-any\.whl is a blob, but the project "
                                           r"comes from src/"):
        compile_package(release, "dynamic-asgs", packages, work)
    shutil.rmtree(release / "src")
    with pytest.raises(CompileError, match=r"missing files for pattern 'dynamic_asgs/\*\*/\*'"):
        compile_package(release, "dynamic-asgs", packages, work)


def test_the_package_has_pyprojects_console_scripts(compiled_packages: dict[str, Compiled]) -> None:
    """The packaging script writes the console scripts itself: they must be pyproject.toml's."""
    scripts = tomllib.loads((RELEASE / "pyproject.toml").read_text())["project"]["scripts"]
    packaging = (RELEASE / "packages" / "dynamic-asgs" / "packaging").read_text()
    block = packaging.split("ENTRY_POINTS='", 1)[1].split("'", 1)[0]
    declared = dict(tuple(part.strip() for part in line.split("=", 1)) for line in block.strip().splitlines())
    assert declared == scripts, ("packages/dynamic-asgs/packaging's ENTRY_POINTS must list pyproject.toml's "
                                 f"[project.scripts] exactly: {scripts}")
    venv = compiled_packages["dynamic-asgs"].install_dir
    for name in scripts:
        assert os.access(venv / "bin" / name, os.X_OK), name
    result = run(venv / "bin" / "python", "-c", "import importlib.metadata as m, dynamic_asgs;"
                 "print(m.version('dynamic-asgs'), dynamic_asgs.__file__)")
    assert result.returncode == 0, result.stderr
    version, path = result.stdout.split()
    assert version == tomllib.loads((RELEASE / "pyproject.toml").read_text())["project"]["version"]
    assert path.startswith(str(venv)), "the project is installed in the package, not found elsewhere"
    assert (Path(path).parent / "policy_server" / "config_schema.json").is_file(), "package data comes along"
