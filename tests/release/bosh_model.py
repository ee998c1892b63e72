"""What the BOSH director does with a deployment manifest, modelled for tests: add-on placement,
job uniqueness per instance group, and link resolution.

Goal: a manifest the director would refuse for one of these reasons is refused here with the
director's words, and one that passes here resolves every modelled link to the provider the
director would pick; `bosh int` cannot show any of it (it only renders YAML). Read from the
director's source (cloudfoundry/bosh, src/bosh-director/lib/bosh/director):

- Placement (`deployment_plan/placement_planner`, `addon/filter`): an add-on's jobs join every
  instance group its `include` matches (all of the given criteria; no `include`: every group)
  unless its `exclude` matches. Criteria modelled: `stemcell` (by os), `jobs` (name and
  release), `instance_groups`, `deployments`; any other criterion raises `ModelError`.
- Uniqueness (`instance_group_spec_parser.rb` check_job_uniqueness, `addon.rb`): a job name
  appears once per instance group, add-ons included ("Colocated job ... is already added").
- Links (`links/links_parser`, `links/links_manager.rb`), within one deployment:
  a provider is every `provides` entry of a job's spec, under its name or the manifest's `as`,
  unless the manifest says `provides: {name: nil}` (not consumable); a consumer is every
  `consumes` entry: implicit (no manifest entry) takes every consumable provider of its type,
  anywhere in the deployment; explicit (`from: X`) those of its type whose name or alias is X;
  `nil` blocks it; a manual link (`instances`, `properties`, `address`) needs no provider.
  Exactly one provider must be found, else "Multiple link providers found" or "No link
  providers found"; an optional consumer with none found has no link (unless it is explicit).
  Links across deployments are not modelled (`ModelError`).

Jobs come with their spec (its `provides`/`consumes`) from ``spec_of(release, job)``; a job
whose spec is unknown (None) provides and consumes nothing here, so the caller decides which
releases must be fully known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Job", "Link", "ModelError", "SpecOf", "duplicate_jobs", "link_errors", "placed_jobs", "resolve_links"]

SpecOf = Callable[[str, str], "dict[str, Any] | None"]
MANUAL_KEYS = ("instances", "properties", "address")
FILTERS = ("stemcell", "jobs", "instance_groups", "deployments")


class ModelError(Exception):
    """The manifest uses a feature this model does not cover."""


@dataclass(frozen=True)
class Job:
    """A job placed on an instance group (from the group's jobs or an add-on)."""

    group: str
    name: str
    release: str
    entry: dict[str, Any]  # the manifest's job entry: properties, provides, consumes
    addon: str | None = None

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.entry.get("properties") or {})


@dataclass(frozen=True)
class Link:
    """One consumer of a link and the providers the director finds for it."""

    group: str
    job: str
    name: str
    type: str
    providers: tuple[tuple[str, str, str], ...]  # (group, job, link name) of each provider found
    error: str | None

    @property
    def provider(self) -> tuple[str, str, str] | None:
        """The one provider (None for a manual, blocked or absent optional link)."""
        return self.providers[0] if self.error is None and len(self.providers) == 1 else None


def _stemcell_os(manifest: dict[str, Any], group: dict[str, Any]) -> str | None:
    aliases = {s.get("alias"): s.get("os") for s in manifest.get("stemcells") or []}
    return aliases.get(group.get("stemcell"))


def _matches(rule: dict[str, Any], manifest: dict[str, Any], group: dict[str, Any], *, include: bool) -> bool:
    unknown = sorted(set(rule) - set(FILTERS))
    if unknown:
        raise ModelError(f"add-on placement criteria {unknown} are not modelled")
    if not any(rule.values()):
        return include  # an empty include takes every group, an empty exclude none
    checks = {
        "stemcell": lambda entries: _stemcell_os(manifest, group) in {e.get("os") for e in entries},
        "jobs": lambda entries: any((j.get("name"), j.get("release")) in {(e.get("name"), e.get("release"))
                                                                          for e in entries}
                                    for j in group.get("jobs") or []),
        "instance_groups": lambda entries: group.get("name") in entries,
        "deployments": lambda entries: manifest.get("name") in entries,
    }
    return all(checks[key](entries) for key, entries in rule.items() if entries)


def placed_jobs(manifest: dict[str, Any]) -> dict[str, list[Job]]:
    """Instance group name -> its jobs, then the add-on jobs placed on it, in manifest order."""
    placed: dict[str, list[Job]] = {}
    for group in manifest.get("instance_groups") or []:
        jobs = [Job(group["name"], j["name"], j.get("release", ""), j) for j in group.get("jobs") or []]
        for addon in manifest.get("addons") or []:
            included = _matches(addon.get("include") or {}, manifest, group, include=True)
            if included and not _matches(addon.get("exclude") or {}, manifest, group, include=False):
                jobs.extend(Job(group["name"], j["name"], j.get("release", ""), j, addon=addon.get("name"))
                            for j in addon.get("jobs") or [])
        placed[group["name"]] = jobs
    return placed


def duplicate_jobs(manifest: dict[str, Any]) -> list[str]:
    """The director's refusals of a job name used twice in one instance group (add-ons included)."""
    errors = []
    for group, jobs in placed_jobs(manifest).items():
        seen: set[str] = set()
        for job in jobs:
            if job.name in seen:
                errors.append(f"Colocated job '{job.name}' is already added to the instance group '{group}'")
            seen.add(job.name)
    return errors


@dataclass(frozen=True)
class _Provider:
    group: str
    job: str
    name: str
    alias: str
    type: str
    consumable: bool


def _providers(jobs: list[Job], spec_of: SpecOf) -> Iterator[_Provider]:
    for job in jobs:
        spec = spec_of(job.release, job.name) or {}
        manifest = job.entry.get("provides") or {}
        for entry in spec.get("provides") or []:
            source = manifest.get(entry["name"])
            if source is not None and source != "nil" and not isinstance(source, dict):
                raise ModelError(f"Provider '{entry['name']}' in job '{job.name}' in instance group '{job.group}' "
                                 "specified in the manifest should only be a hash or string 'nil'")
            alias = source.get("as", entry["name"]) if isinstance(source, dict) else entry["name"]
            yield _Provider(job.group, job.name, entry["name"], alias, entry["type"], source != "nil")


def _header(job: Job, name: str, alias: str, kind: str) -> str:
    aliased = f"alias '{alias}' and " if alias != name else ""
    return (f"Failed to resolve link '{name}' with {aliased}type '{kind}' from job '{job.name}' "
            f"in instance group '{job.group}'.")


def _resolve_one(job: Job, entry: dict[str, Any], providers: list[_Provider]) -> Link:
    name, kind, optional = entry["name"], entry["type"], bool(entry.get("optional", False))
    source = (job.entry.get("consumes") or {}).get(name)
    if isinstance(source, dict) and any(k in source for k in MANUAL_KEYS):
        return Link(job.group, job.name, name, kind, (), None)
    if isinstance(source, dict) and source.get("deployment"):
        raise ModelError(f"job '{job.name}' consumes '{name}' from deployment '{source['deployment']}'")
    blocked, explicit = source == "nil", source is not None
    alias = str(source.get("from", name)).split(".")[-1] if isinstance(source, dict) else name
    found = [] if blocked else [p for p in providers if p.type == kind and p.consumable
                                and (not explicit or p.alias == alias)]
    ids = tuple((p.group, p.job, p.name) for p in found)
    if not found and optional and not (explicit and not blocked):
        return Link(job.group, job.name, name, kind, (), None)
    if len(found) == 1:
        return Link(job.group, job.name, name, kind, ids, None)
    details = [f"Link provider '{p.name}' " + (f"with alias '{p.alias}' " if p.alias != p.name else "")
               + f"from job '{p.job}' in instance group '{p.group}'" for p in found] or ["No link providers found"]
    more = " Multiple link providers found:" if len(found) > 1 else " Details below:"
    error = _header(job, name, alias, kind) + more + "".join(f"\n    - {d}" for d in details)
    return Link(job.group, job.name, name, kind, ids, error)


def resolve_links(manifest: dict[str, Any], spec_of: SpecOf, types: set[str] | None = None) -> list[Link]:
    """Every consumer (of ``types``, or all) with the providers the director finds for it."""
    jobs = [job for group in placed_jobs(manifest).values() for job in group]
    providers = list(_providers(jobs, spec_of))
    links = []
    for job in jobs:
        for entry in (spec_of(job.release, job.name) or {}).get("consumes") or []:
            if types is None or entry["type"] in types:
                links.append(_resolve_one(job, entry, providers))
    return links


def link_errors(links: list[Link]) -> list[str]:
    """The director's messages for the links it cannot resolve."""
    return [link.error for link in links if link.error is not None]
