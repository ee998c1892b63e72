"""Render BOSH job templates as the director does, for tests: spec defaults, links, ERB in Ruby.

Goals: a template that renders here renders under the director with the same text, and one the
director refuses (an unset property without a default, a missing link) is refused here with the
director's message; every property a template reads is recorded, so a test can check that the
job's spec declares it (the director hands a template only declared properties, so `p(name,
default)` of an undeclared name silently yields the default).

Mechanisms:
- The director's side is Python: the job's spec (jobs/<job>/spec) gives the declared properties
  and their defaults; `merged_properties` copies each declared property from the manifest's job
  properties, else its default (bosh's copy_property), and drops everything undeclared. Links
  must be declared in `consumes`; a non-optional one must be given. `link_from_job` (a job
  directory) and `link_from_spec` (a spec, e.g. another release's) build a link as a provider
  job's spec and properties would (only the properties its `provides` lists).
- The instance spec is the director's: `spec.name` and `spec.job.name` are the instance group's
  (the director's v1 naming), so a template that takes its own job's name from them is caught.
- The template side is bosh-template's evaluation context, re-implemented in
  tests/release/bosh_tools/render_template.rb and run with Debian's ruby (JSON in, JSON out).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "GROUP", "RenderError", "Rendered", "default_spec", "link_from_job", "link_from_spec", "load_job_spec",
    "merged_properties",
    "render", "render_full", "render_job", "undeclared_properties",
]

HARNESS = Path(__file__).with_name("render_template.rb")
DEPLOYMENT = "dynamic-asgs"
GROUP = "test-instance-group"


class RenderError(Exception):
    """The director would refuse this template or job (message as the director words it)."""


@dataclass(frozen=True)
class Rendered:
    """A rendered template and what it asked for."""

    text: str
    properties: tuple[str, ...]
    link_properties: tuple[tuple[str, str], ...]
    links: tuple[str, ...]


def load_job_spec(job_dir: Path | str) -> dict[str, Any]:
    """The job's spec file as a mapping (properties, templates, consumes, provides, packages)."""
    path = Path(job_dir) / "spec"
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise RenderError(f"{path}: expected a YAML mapping")
    return spec


def _copy_property(dst: dict[str, Any], src: dict[str, Any], name: str, default: Any) -> None:
    keys = name.split(".")
    ref: Any = src
    for key in keys:
        if not isinstance(ref, dict):
            raise RenderError(f"Property '{name}' expects a hash, but received '{type(ref).__name__}'")
        ref = ref.get(key)
        if ref is None:
            break
    for key in keys[:-1]:
        dst = dst.setdefault(key, {})
    dst[keys[-1]] = default if ref is None else ref


def merged_properties(declared: dict[str, Any] | None, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Each declared property from the manifest's job properties, else the spec's default."""
    merged: dict[str, Any] = {}
    for name, definition in sorted((declared or {}).items()):
        default = definition.get("default") if isinstance(definition, dict) else None
        _copy_property(merged, manifest or {}, name, default)
    return merged


def default_spec(group: str = GROUP, jobs: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """An instance spec as the director gives templates: one bootstrap instance on 127.0.0.1.

    As in the director (instance_spec.rb), ``name`` and ``job.name`` are the instance group's, and
    ``job.templates`` lists the group's jobs: a template never learns its own job's name from it.
    """
    spec = {
        "name": group, "deployment": DEPLOYMENT, "id": "6b1a1f1c-0d1e-4c8a-9a55-3a1f4e0b2c01",
        "index": 0, "az": "z1", "address": "127.0.0.1", "ip": "127.0.0.1", "bootstrap": True,
        "networks": {"default": {"ip": "127.0.0.1", "default": ["dns", "gateway"]}},
        "job": {"name": group, "templates": [{"name": job} for job in jobs or []]},
    }
    spec.update(overrides)
    return spec


def link_from_spec(spec: dict[str, Any], link_name: str, properties: dict[str, Any] | None = None, *,
                   instances: list[dict[str, Any]] | None = None, address: str | None = None,
                   group: str | None = None) -> dict[str, Any]:
    """The link ``link_name`` as a provider job (its ``spec`` and manifest ``properties``) exposes it."""
    provided = [p for p in spec.get("provides") or [] if p.get("name") == link_name]
    if not provided:
        raise RenderError(f"job '{spec.get('name')}' provides no link '{link_name}'")
    names = provided[0].get("properties") or []
    declared = spec.get("properties") or {}
    missing = [n for n in names if n not in declared]
    if missing:
        raise RenderError(f"job '{spec.get('name')}' link '{link_name}' exposes undeclared properties {missing}")
    link_props = merged_properties({n: declared[n] for n in names}, properties)
    group = group or str(spec.get("name"))
    default_instance = {"name": group, "index": 0, "id": "2f6c6a8e-5a59-4f4b-8a61-6c1b8f1f0a01", "az": "z1",
                        "address": "127.0.0.1", "bootstrap": True}
    link = {"instances": instances if instances is not None else [default_instance], "properties": link_props,
            "instance_group": group, "default_network": "default", "deployment_name": DEPLOYMENT,
            "domain": "bosh"}
    if address is not None:
        link["address"] = address
    return link


def link_from_job(provider_dir: Path | str, link_name: str, properties: dict[str, Any] | None = None, *,
                  instances: list[dict[str, Any]] | None = None, address: str | None = None,
                  group: str | None = None) -> dict[str, Any]:
    """The link ``link_name`` as the job in ``provider_dir`` (its spec and manifest ``properties``) exposes it."""
    return link_from_spec(load_job_spec(provider_dir), link_name, properties, instances=instances, address=address,
                          group=group)


def _check_links(spec: dict[str, Any], links: dict[str, Any]) -> None:
    consumes = {c.get("name"): c for c in spec.get("consumes") or []}
    for name in links:
        if name not in consumes:
            raise RenderError(f"job '{spec.get('name')}' does not consume a link '{name}'")
    for name, consumer in consumes.items():
        if name not in links and not consumer.get("optional", False):
            raise RenderError(f"job '{spec.get('name')}' consumes link '{name}' (not optional): pass it in links")


def _template_path(job_dir: Path, spec: dict[str, Any], template: str) -> Path:
    if template == "monit":
        return job_dir / "monit"
    if template not in (spec.get("templates") or {}):
        raise RenderError(f"job '{spec.get('name')}' spec lists no template '{template}'")
    return job_dir / "templates" / template


def _request(job_dir: Path, job_spec: dict[str, Any], template: str, properties: dict[str, Any] | None,
             links: dict[str, Any], spec: dict[str, Any] | None) -> dict[str, Any]:
    instance = {**default_spec(jobs=[str(job_spec.get("name"))]), **(spec or {})}
    instance["properties"] = merged_properties(job_spec.get("properties"), properties)
    instance["links"] = links
    return {"template": str(_template_path(job_dir, job_spec, template)), "spec": instance}


def _run_harness(request: dict[str, Any]) -> Any:
    ruby = shutil.which("ruby")
    if ruby is None:
        raise RenderError("ruby is not installed (Debian package ruby)")
    result = subprocess.run([ruby, str(HARNESS)], input=json.dumps(request), text=True, capture_output=True,
                            check=False, timeout=60)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise RenderError(f"render_template.rb failed (exit {result.returncode}): {result.stderr.strip()}") from exc


def _rendered(answer: dict[str, Any]) -> Rendered:
    if "error" in answer:
        raise RenderError(answer["error"])
    return Rendered(text=answer["output"], properties=tuple(answer["properties"]),
                    link_properties=tuple((a, b) for a, b in answer["link_properties"]),
                    links=tuple(answer["links"]))


def render_full(job_dir: Path | str, template: str, properties: dict[str, Any] | None = None, *,
                links: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> Rendered:
    """Render ``template`` (a source name under templates/, or "monit") of the job in ``job_dir``."""
    job_dir = Path(job_dir)
    job_spec = load_job_spec(job_dir)
    links = links or {}
    _check_links(job_spec, links)
    return _rendered(_run_harness(_request(job_dir, job_spec, template, properties, links, spec)))


def render(job_dir: Path | str, template: str, properties: dict[str, Any] | None = None, *,
           links: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> str:
    """The text of ``template`` rendered with the manifest's job ``properties``."""
    return render_full(job_dir, template, properties, links=links, spec=spec).text


def render_job(job_dir: Path | str, properties: dict[str, Any] | None = None, *,
               links: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> dict[str, Rendered]:
    """Every template of the job keyed by its destination path (as under /var/vcap/jobs/<job>/), and "monit".

    One Ruby run renders them all; the first template the director would refuse raises.
    """
    job_dir = Path(job_dir)
    job_spec = load_job_spec(job_dir)
    links = links or {}
    _check_links(job_spec, links)
    sources = {"monit": "monit", **{str(d): str(s) for s, d in (job_spec.get("templates") or {}).items()}}
    requests = [_request(job_dir, job_spec, source, properties, links, spec) for source in sources.values()]
    answers = _run_harness({"batch": requests})["batch"]
    return {destination: _rendered(answer) for destination, answer in zip(sources, answers, strict=True)}


def undeclared_properties(job_dir: Path | str, rendered: Rendered) -> list[str]:
    """Properties the template read that the job's spec does not declare (a prefix of one counts)."""
    declared = load_job_spec(job_dir).get("properties") or {}
    return [name for name in rendered.properties
            if name not in declared and not any(d.startswith(f"{name}.") for d in declared)]
