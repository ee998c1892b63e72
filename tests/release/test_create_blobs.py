"""scripts/release/create-blobs: bosh add-blob layout, target-matching wheels, clean refusals."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "release" / "create-blobs"
LEGACY_PLATFORMS = ("any", "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")
UPSTREAM_3_11_2 = "sha256:2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849"


def create_blobs(*args: str, release: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run create-blobs; with ``release``, the copy's script (it works on its own release directory)."""
    script = release / "scripts" / "release" / "create-blobs" if release is not None else SCRIPT
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False,
                          timeout=300)


def test_blobs_yml_records_cpython_and_the_wheels(release_blobs: Path) -> None:
    entries = yaml.safe_load((release_blobs / "config" / "blobs.yml").read_text())
    assert entries["python3/Python-3.11.2.tgz"]["sha"] == UPSTREAM_3_11_2, "Debian's orig tarball is upstream's"
    wheels = [name for name in entries if name.startswith("dynamic-asgs/wheels/")]
    assert not any(name.startswith("dynamic-asgs/wheels/dynamic_asgs-") for name in wheels), \
        "the project's code comes from src/, not from a blob"
    names = {Path(name).name.split("-")[0].lower() for name in wheels}
    for pin in tomllib.loads((release_blobs / "pyproject.toml").read_text())["project"]["dependencies"]:
        assert pin.split("==")[0].split("[")[0].lower().replace("-", "_") in names, pin
    assert set(entries) == {"python3/Python-3.11.2.tgz", *wheels}
    for entry in entries.values():
        assert set(entry) == {"size", "sha"} and re.fullmatch(r"sha256:[0-9a-f]{64}", entry["sha"])


def test_wheels_match_the_target(release_blobs: Path) -> None:
    """CPython 3.11 (cp311, abi3 or pure), manylinux x86_64 with glibc up to Jammy's 2.35."""
    for wheel in (release_blobs / "blobs" / "dynamic-asgs" / "wheels").glob("*.whl"):
        python, abi, platforms = wheel.stem.split("-")[-3:]
        assert python in ("py3", "cp311") or re.fullmatch(r"cp3\d+", python), wheel.name
        assert abi in ("none", "cp311", "abi3"), wheel.name
        for platform in platforms.split("."):
            glibc = re.fullmatch(r"manylinux_2_(\d+)_x86_64", platform)
            assert platform in LEGACY_PLATFORMS or (glibc is not None and int(glibc.group(1)) <= 35), wheel.name


def test_check_agrees_with_what_a_run_made(release_blobs: Path) -> None:
    result = create_blobs("--check", release=release_blobs)
    assert result.returncode == 0, result.stderr
    assert "blobs are up to date" in result.stdout


def test_a_code_change_needs_no_new_blob_but_a_pin_change_does(release_blobs: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    for name in ("config", "scripts"):
        shutil.copytree(release_blobs / name, release / name)
    shutil.copytree(release_blobs / "blobs", release / "blobs", copy_function=os.link)
    shutil.copy2(release_blobs / "pyproject.toml", release / "pyproject.toml")
    (release / "src" / "dynamic_asgs").mkdir(parents=True)
    (release / "src" / "dynamic_asgs" / "changed.py").write_text("CHANGED = True\n")
    assert create_blobs("--check", release=release).returncode == 0
    pyproject = release / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"requests==2.34.2"', '"requests==2.99.0"'))
    result = create_blobs("--check", release=release)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "pyproject.toml pins requests==2.99.0; the blobs have 2.34.2" in result.stderr


def tarball(path: Path, top: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"{top}/README")
        data = b"readme\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_a_wrong_tarball_is_refused_and_nothing_changes(release_blobs: Path, tmp_path: Path) -> None:
    blobs_yml = release_blobs / "config" / "blobs.yml"
    before = blobs_yml.read_bytes()
    cases = {
        tarball(tmp_path / "Python-3.12.0.tgz", "Python-3.12.0"): "expected CPython 3.11 source",
        tmp_path / "missing.tgz": "no such file",
    }
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    cases[tmp_path / "junk.tgz"] = "not a gzip'd tar archive"
    for path, message in cases.items():
        result = create_blobs("--cpython-tarball", str(path), release=release_blobs)
        assert result.returncode == 1
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert blobs_yml.read_bytes() == before


def test_cpython_comes_from_the_machine_s_apt_sources_read_as_deb_src(tmp_path: Path) -> None:
    """Both formats: every option and field kept, `deb` read as `deb-src`, disabled and other lines left out."""
    loader = SourceFileLoader("create_blobs", str(SCRIPT))
    spec = spec_from_loader(loader.name, loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb [signed-by=/k.gpg arch=amd64] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n\n")
    (parts / "extra.list").write_text(
        "deb http://mirror.example/debian bookworm main contrib\n"
        "deb-src [signed-by=/k.gpg arch=amd64] http://mirror.example/debian bookworm main contrib\n")
    (parts / "off.list.disabled").write_text("deb http://elsewhere.example/debian bookworm main\n")
    (parts / "debian.sources").write_text(
        "Types: deb\n# kept out\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /k.gpg\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/security\nSuites: bookworm-security\nComponents: main\n"
        "Enabled: no\n\n"
        "Types: rpm\nURIs: http://elsewhere.example\n")
    lines, stanzas = module.source_entries(tmp_path / "sources.list", parts)
    assert lines == ["deb-src [signed-by=/k.gpg arch=amd64] http://mirror.example/debian bookworm main contrib",
                     "deb-src http://mirror.example/debian bookworm main",
                     "deb-src http://mirror.example/debian bookworm main contrib"]
    assert stanzas == [
        "Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /k.gpg",
        "Types: deb-src\nURIs: http://mirror.example/security\nSuites: bookworm-security\nComponents: main\n"
        "Enabled: no"]
