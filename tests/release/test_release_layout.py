"""The release-layout checker stops wherever `bosh create-release` would, and the release passes it."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from bosh_tools.release_layout import check_blobs, check_final, check_release

FIXTURES = Path(__file__).parent / "fixtures" / "jobs"


def test_this_release_passes(release_blobs: Path) -> None:
    assert check_release(release_blobs) == []


def test_final_yml_names_dynamic_asgs(release_blobs: Path) -> None:
    final = yaml.safe_load((release_blobs / "config" / "final.yml").read_text())
    assert final["name"] == "dynamic-asgs"
    assert final["blobstore"]["provider"] == "local"


def make_release(root: Path) -> Path:
    """A small valid release: a package from a blob and a src file, a job using it (the fixture job)."""
    (root / "config").mkdir(parents=True)
    (root / "config" / "final.yml").write_text(
        "name: demo\nblobstore: {provider: local, options: {blobstore_path: /tmp/x}}\n")
    blob = b"tarball bytes"
    (root / "blobs" / "lib").mkdir(parents=True)
    (root / "blobs" / "lib" / "lib-1.0.tgz").write_bytes(blob)
    (root / "config" / "blobs.yml").write_text(
        f"lib/lib-1.0.tgz:\n  size: {len(blob)}\n  sha: sha256:{hashlib.sha256(blob).hexdigest()}\n")
    (root / "src" / "app" / "sub").mkdir(parents=True)
    (root / "src" / "app" / "sub" / "main.py").write_text("print()\n")
    for name, spec in {"lib": "name: lib\nfiles: [lib/lib-*.tgz]\n",
                       "app": "name: app\ndependencies: [lib]\nfiles: ['app/**/*.py']\n"}.items():
        (root / "packages" / name).mkdir(parents=True)
        (root / "packages" / name / "spec").write_text(spec)
        (root / "packages" / name / "packaging").write_text("set -e\n")
    shutil.copytree(FIXTURES / "echo-server", root / "jobs" / "echo-server")
    shutil.copytree(FIXTURES / "echo-db", root / "jobs" / "echo-db")
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_valid_release_passes(tmp_path: Path) -> None:
    assert check_release(make_release(tmp_path)) == []


@pytest.mark.parametrize(("breakage", "problem"), [
    (lambda r: (r / "config/final.yml").unlink(), "config/final.yml: missing"),
    (lambda r: (r / "config/final.yml").write_text("blobstore: {provider: local}\n"),
     "config/final.yml: no release name"),
    (lambda r: (r / "config/final.yml").write_text("name: x\nblobstore: {provider: local}\n"),
     "config/final.yml: the local blobstore needs options.blobstore_path"),
    (lambda r: (r / "config/final.yml").write_text("name: x\nblobstore: {provider: ftp}\n"),
     "config/final.yml: blobstore.provider 'ftp' is not one of"),
    (lambda r: (r / "blobs/lib/lib-1.0.tgz").unlink(), "config/blobs.yml: lib/lib-1.0.tgz: not in blobs/"),
    (lambda r: (r / "blobs/lib/lib-1.0.tgz").write_bytes(b"tarball byteZ"),
     "config/blobs.yml: lib/lib-1.0.tgz: blobs/lib/lib-1.0.tgz has sha256 "),
    (lambda r: (r / "blobs/lib/lib-1.0.tgz").write_bytes(b"x"), "has 1 bytes, not 13"),
    (lambda r: edit(r / "config/blobs.yml", "sha: sha256:", "sha: md5:"),
     "config/blobs.yml: lib/lib-1.0.tgz: expected size (an integer) and sha"),
    (lambda r: (r / "blobs/lib/stray.tgz").write_bytes(b"x"), "blobs/lib/stray.tgz: not tracked in config/blobs.yml"),
    (lambda r: edit(r / "packages/lib/spec", "lib-*.tgz", "lib-2.*.tgz"),
     "packages/lib/spec: missing files for pattern 'lib/lib-2.*.tgz' (in src/ or blobs/)"),
    (lambda r: edit(r / "packages/app/spec", "app/**/*.py", "app/*.py"), "missing files for pattern 'app/*.py'"),
    (lambda r: (r / "packages/app/packaging").unlink(), "packages/app/packaging: missing"),
    (lambda r: edit(r / "packages/app/spec", "name: app", "name: ap"),
     "packages/app/spec: name 'ap' is not the directory's name 'app'"),
    (lambda r: edit(r / "packages/app/spec", "[lib]", "[lib, nope]"), "packages/app/spec: unknown dependency 'nope'"),
    (lambda r: edit(r / "packages/lib/spec", "name: lib", "name: lib\ndependencies: [app]"),
     "packages: dependency cycle app -> lib -> app"),
    (lambda r: edit(r / "packages/lib/spec", "files: [", "files: "), "packages/lib/spec: files must be a list"),
    (lambda r: (r / "jobs/echo-db/monit").unlink(), "jobs/echo-db/monit: missing"),
    (lambda r: (r / "jobs/echo-server/templates/ctl.erb").unlink(),
     "jobs/echo-server/spec: template 'ctl.erb' is not in jobs/echo-server/templates/"),
    (lambda r: edit(r / "jobs/echo-server/spec", "server.key.erb: config/certs/server.key",
                    "server.key.erb: config/config.json"),
     "jobs/echo-server/spec: destination 'config/config.json' appears twice"),
    (lambda r: edit(r / "jobs/echo-server/spec", "packages: []", "packages: [app, python9]"),
     "jobs/echo-server/spec: unknown package 'python9'"),
    (lambda r: edit(r / "jobs/echo-server/spec", "properties: [port]", "properties: [port, nope]"),
     "jobs/echo-server/spec: link 'echo' exposes undeclared property 'nope'"),
    (lambda r: edit(r / "jobs/echo-server/spec", "  type: echo-db\n", "\n"),
     "jobs/echo-server/spec: consumes must be a list of entries with a name and a type"),
    (lambda r: edit(r / "jobs/echo-db/spec", "name: echo-db\n", "name: db\n"),
     "jobs/echo-db/spec: name 'db' is not the directory's name 'echo-db'"),
    (lambda r: (r / "jobs/echo-db/spec").write_text("name: [unclosed\n"), "jobs/echo-db/spec: not valid YAML"),
])
def test_each_breakage_is_reported(tmp_path: Path, breakage: Callable[[Path], object], problem: str) -> None:
    release = make_release(tmp_path)
    breakage(release)
    problems = check_release(release)
    assert any(p.startswith(problem) or problem in p for p in problems), problems


def test_no_blobs_yml_means_no_blobs(tmp_path: Path) -> None:
    release = make_release(tmp_path)
    (release / "config/blobs.yml").unlink()
    assert check_blobs(release) == ["blobs/lib/lib-1.0.tgz: not tracked in config/blobs.yml"]
    assert check_final(release) == []
