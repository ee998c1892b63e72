"""The director model resolves links, places add-ons and refuses duplicates as the director does."""

from __future__ import annotations

from typing import Any

import pytest
from bosh_model import ModelError, duplicate_jobs, link_errors, placed_jobs, resolve_links

SPECS: dict[str, dict[str, Any]] = {
    "db": {"provides": [{"name": "conn", "type": "dbconn"}]},
    "app": {"consumes": [{"name": "conn", "type": "dbconn"}]},
    "watcher": {"consumes": [{"name": "conn", "type": "dbconn", "optional": True}]},
}


def spec_of(release: str, job: str) -> dict[str, Any] | None:
    return SPECS.get(job)


def manifest(*groups: list[dict[str, Any]], addons: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": "dep", "stemcells": [{"alias": "default", "os": "ubuntu-jammy"}], "addons": addons or [],
            "instance_groups": [{"name": f"g{i}", "stemcell": "default", "jobs": jobs}
                                for i, jobs in enumerate(groups)]}


def job(name: str, **entry: Any) -> dict[str, Any]:
    return {"name": name, "release": "r", **entry}


def resolved(doc: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(link.group, link.job): link.provider or link.error for link in resolve_links(doc, spec_of)}


def test_implicit_consumption_takes_the_one_provider_of_its_type_anywhere() -> None:
    assert resolved(manifest([job("db")], [job("app")])) == {("g1", "app"): ("g0", "db", "conn")}


def test_two_providers_of_a_type_leave_implicit_consumers_ambiguous() -> None:
    errors = link_errors(resolve_links(manifest([job("db")], [job("db"), job("app"), job("watcher")]), spec_of))
    assert len(errors) == 2 and all("Multiple link providers found" in e for e in errors)
    assert errors[0].startswith(
        "Failed to resolve link 'conn' with type 'dbconn' from job 'app' in instance group 'g1'.")


def test_explicit_from_nil_provider_and_alias_disambiguate() -> None:
    doc = manifest([job("db", provides={"conn": {"as": "main"}})], [job("db"), job("app", consumes={"conn": {
        "from": "main"}})])
    assert resolved(doc) == {("g1", "app"): ("g0", "db", "conn")}
    doc = manifest([job("db", provides={"conn": "nil"})], [job("db"), job("app")])
    assert resolved(doc) == {("g1", "app"): ("g1", "db", "conn")}


def test_no_provider_fails_a_required_link_but_not_an_optional_one() -> None:
    links = resolve_links(manifest([job("app"), job("watcher")]), spec_of)
    assert [link.job for link in links if link.error] == ["app"]
    assert "Details below:\n    - No link providers found" in str(links[0].error)
    explicit = manifest([job("watcher", consumes={"conn": {"from": "other"}})])
    assert link_errors(resolve_links(explicit, spec_of)), "an explicit optional link must resolve"


def test_blocked_and_manual_links_need_no_provider() -> None:
    doc = manifest([job("watcher", consumes={"conn": "nil"}), job("app", consumes={"conn": {
        "instances": [{"address": "db.example.com"}], "properties": {"port": 5432}}})])
    assert link_errors(resolve_links(doc, spec_of)) == []
    assert link_errors(resolve_links(manifest([job("app", consumes={"conn": "nil"})]), spec_of)), (
        "a blocked required link is an error")


def test_addons_are_placed_by_include_and_exclude_and_count_as_colocated_jobs() -> None:
    addons: list[dict[str, Any]] = [{"name": "everywhere", "jobs": [job("db")]},
                                    {"name": "jammy-but-apps", "include": {"stemcell": [{"os": "ubuntu-jammy"}]},
                                     "exclude": {"jobs": [{"name": "app", "release": "r"}]}, "jobs": [job("agent")]},
                                    {"name": "nowhere", "include": {"instance_groups": ["g9"]}, "jobs": [job("x")]}]
    doc = manifest([job("app")], [job("db")], addons=addons)
    assert {g: [j.name for j in jobs] for g, jobs in placed_jobs(doc).items()} == {
        "g0": ["app", "db"], "g1": ["db", "db", "agent"]}
    assert duplicate_jobs(doc) == ["Colocated job 'db' is already added to the instance group 'g1'"]
    with pytest.raises(ModelError, match="lifecycle"):
        placed_jobs(manifest([job("app")], addons=[{"name": "a", "include": {"lifecycle": "errand"}, "jobs": []}]))
