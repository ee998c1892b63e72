"""Check a BOSH release directory wherever `bosh create-release` would refuse it.

Goal: the bosh CLI (a Go binary from GitHub) cannot be installed here, so this checker stands in
for its release-building checks; a release it passes differs from one the CLI builds only in what
the CLI alone can tell (archive packing, fingerprints).

What it checks, with the CLI's rule for each:
- config/final.yml: a mapping with a release `name` and a `blobstore` whose `provider` is known;
  the `local` provider needs `options.blobstore_path`.
- config/blobs.yml: `path: {size, sha[, object_id]}` entries (sha is sha1 hex or sha256:<hex>);
  each blob is present under blobs/ with that size and digest; no untracked file under blobs/
  (`bosh sync-blobs`, run by create-release, deletes those, so a package relying on one breaks).
- packages/<name>/: spec with `name` equal to the directory, a `packaging` script, every `files`
  glob matching at least one file in src/ or blobs/ (doublestar: `**` crosses directories),
  `dependencies` naming existing packages, no dependency cycle.
- jobs/<name>/: spec with `name` equal to the directory, a `monit` file, every template source
  present under templates/, distinct destinations, `packages` existing, `consumes`/`provides`
  entries with a name and a type (names unique), `provides[].properties` declared in `properties`.
Problems come back as "<path relative to the release>: <what is wrong>" lines.
"""

from __future__ import annotations

import glob
import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["check_blobs", "check_final", "check_jobs", "check_packages", "check_release"]

PROVIDERS = ("local", "s3", "gcs", "dav", "azure-storage", "alioss")


def _load(path: Path, release: Path, problems: list[str]) -> dict[str, Any] | None:
    rel = path.relative_to(release)
    if not path.is_file():
        problems.append(f"{rel}: missing")
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        problems.append(f"{rel}: not valid YAML ({str(exc).splitlines()[0]})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{rel}: expected a YAML mapping")
        return None
    return data


def check_final(release: Path) -> list[str]:
    """config/final.yml names the release and its blobstore."""
    problems: list[str] = []
    final = _load(release / "config" / "final.yml", release, problems)
    if final is None:
        return problems
    name = final.get("name", final.get("final_name"))
    if not isinstance(name, str) or not name:
        problems.append("config/final.yml: no release name")
    store = final.get("blobstore")
    provider = store.get("provider") if isinstance(store, dict) else None
    if provider not in PROVIDERS:
        problems.append(f"config/final.yml: blobstore.provider {provider!r} is not one of {', '.join(PROVIDERS)}")
    elif provider == "local" and not (store.get("options") or {}).get("blobstore_path"):
        problems.append("config/final.yml: the local blobstore needs options.blobstore_path")
    return problems


def _digest(path: Path, sha: str) -> str:
    algorithm, expected = ("sha256", sha[7:]) if sha.startswith("sha256:") else ("sha1", sha)
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "" if digest.hexdigest() == expected else f"{algorithm} {digest.hexdigest()}"


def check_blobs(release: Path) -> list[str]:
    """Every blob in config/blobs.yml is in blobs/ with its recorded size and digest; none untracked."""
    problems: list[str] = []
    path = release / "config" / "blobs.yml"
    entries = (_load(path, release, problems) or {}) if path.exists() and path.read_text().strip() else {}
    blobs_dir = release / "blobs"
    for name, entry in sorted(entries.items()):
        where = f"config/blobs.yml: {name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or not isinstance(
                entry.get("sha"), str) or not re.fullmatch(r"[0-9a-f]{40}|sha256:[0-9a-f]{64}", entry["sha"]):
            problems.append(f"{where}: expected size (an integer) and sha (sha1 hex or sha256:<hex>)")
            continue
        blob = blobs_dir / name
        if not blob.is_file():
            problems.append(f"{where}: not in blobs/ (run scripts/release/create-blobs, or bosh sync-blobs)")
        elif blob.stat().st_size != entry["size"]:
            problems.append(f"{where}: blobs/{name} has {blob.stat().st_size} bytes, not {entry['size']}")
        elif mismatch := _digest(blob, entry["sha"]):
            problems.append(f"{where}: blobs/{name} has {mismatch}, not the recorded {entry['sha']}")
    if blobs_dir.is_dir():
        for blob in sorted(p for p in blobs_dir.rglob("*") if p.is_file()):
            name = blob.relative_to(blobs_dir).as_posix()
            if name not in entries:
                problems.append(f"blobs/{name}: not tracked in config/blobs.yml")
    return problems


def _str_list(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) and v for v in value))


def _glob_matches(release: Path, pattern: str) -> bool:
    for base in (release / "src", release / "blobs"):
        if base.is_dir() and any((base / m).is_file() for m in glob.glob(pattern, root_dir=base, recursive=True)):
            return True
    return False


def _cycle(deps: dict[str, list[str]]) -> list[str]:
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> list[str]:
        if state.get(name) == 1:
            return [*trail[trail.index(name):], name]
        if state.get(name) == 2:
            return []
        state[name] = 1
        for dep in deps.get(name, []):
            if found := visit(dep, [*trail, name]):
                return found
        state[name] = 2
        return []

    for name in sorted(deps):
        if found := visit(name, []):
            return found
    return []


def check_packages(release: Path) -> list[str]:
    """packages/*: spec, packaging script, file globs that match, known acyclic dependencies."""
    problems: list[str] = []
    deps: dict[str, list[str]] = {}
    pkg_root = release / "packages"
    names = sorted(p.name for p in pkg_root.iterdir() if p.is_dir()) if pkg_root.is_dir() else []
    for name in names:
        spec = _load(pkg_root / name / "spec", release, problems)
        if not (pkg_root / name / "packaging").is_file():
            problems.append(f"packages/{name}/packaging: missing")
        if spec is None:
            continue
        where = f"packages/{name}/spec"
        if spec.get("name") != name:
            problems.append(f"{where}: name {spec.get('name')!r} is not the directory's name {name!r}")
        for key in ("files", "excluded_files", "dependencies"):
            if not _str_list(spec.get(key)):
                problems.append(f"{where}: {key} must be a list of strings")
        patterns = (spec.get("files") or []) if _str_list(spec.get("files")) else []
        for pattern in patterns:
            if not _glob_matches(release, pattern):
                problems.append(f"{where}: missing files for pattern '{pattern}' (in src/ or blobs/)")
        deps[name] = list(spec.get("dependencies") or []) if _str_list(spec.get("dependencies")) else []
        problems.extend(f"{where}: unknown dependency '{d}'" for d in deps[name] if d not in names)
    if cycle := _cycle(deps):
        problems.append(f"packages: dependency cycle {' -> '.join(cycle)}")
    return problems


def _check_links(where: str, spec: dict[str, Any], problems: list[str]) -> None:
    declared = spec.get("properties") or {}
    for key in ("consumes", "provides"):
        entries = spec.get(key) or []
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("type"), str)
                for e in entries):
            problems.append(f"{where}: {key} must be a list of entries with a name and a type")
            continue
        seen = [e["name"] for e in entries]
        problems.extend(f"{where}: {key} names '{n}' twice" for n in sorted(set(seen)) if seen.count(n) > 1)
    provides = spec.get("provides") if isinstance(spec.get("provides"), list) else []
    for entry in provides or []:
        for prop in (entry.get("properties") or []) if isinstance(entry, dict) else []:
            if prop not in declared:
                problems.append(f"{where}: link '{entry.get('name')}' exposes undeclared property '{prop}'")


def _check_job(release: Path, job: str, packages: set[str], problems: list[str]) -> None:
    job_dir = release / "jobs" / job
    where = f"jobs/{job}/spec"
    spec = _load(job_dir / "spec", release, problems)
    if not (job_dir / "monit").is_file():
        problems.append(f"jobs/{job}/monit: missing")
    if spec is None:
        return
    if spec.get("name") != job:
        problems.append(f"{where}: name {spec.get('name')!r} is not the directory's name {job!r}")
    templates = spec.get("templates") or {}
    if not isinstance(templates, dict):
        problems.append(f"{where}: templates must map template files to destinations")
        templates = {}
    for source in templates:
        if not (job_dir / "templates" / str(source)).is_file():
            problems.append(f"{where}: template '{source}' is not in jobs/{job}/templates/")
    destinations = [str(d) for d in templates.values()]
    problems.extend(f"{where}: destination '{d}' appears twice" for d in sorted(set(destinations))
                    if destinations.count(d) > 1)
    if not _str_list(spec.get("packages")):
        problems.append(f"{where}: packages must be a list of package names")
    else:
        problems.extend(f"{where}: unknown package '{p}'" for p in spec.get("packages") or [] if p not in packages)
    if not isinstance(spec.get("properties") or {}, dict):
        problems.append(f"{where}: properties must be a mapping")
        return
    _check_links(where, spec, problems)


def check_jobs(release: Path) -> list[str]:
    """jobs/*: spec, monit file, templates present, packages known, links well-formed."""
    problems: list[str] = []
    pkg_root, jobs_root = release / "packages", release / "jobs"
    packages = {p.name for p in pkg_root.iterdir() if p.is_dir()} if pkg_root.is_dir() else set()
    for job in sorted(p.name for p in jobs_root.iterdir() if p.is_dir()) if jobs_root.is_dir() else []:
        _check_job(release, job, packages, problems)
    return problems


def check_release(release: Path | str) -> list[str]:
    """Every problem `bosh create-release` would stop at, in release directory order."""
    root = Path(release)
    return [*check_final(root), *check_blobs(root), *check_packages(root), *check_jobs(root)]
