"""The template harness renders like the director: spec defaults, p/if_p, spec, links, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bosh_tools.render import (
    GROUP,
    RenderError,
    link_from_job,
    merged_properties,
    render,
    render_full,
    render_job,
    undeclared_properties,
)

from support.env import require_tools

FIXTURES = Path(__file__).parent / "fixtures" / "jobs"
SERVER, DB = FIXTURES / "echo-server", FIXTURES / "echo-db"


@pytest.fixture(autouse=True)
def _ruby() -> None:
    require_tools("ruby")


def db_link(**props: object) -> dict[str, object]:
    return link_from_job(DB, "database", {"db": {"name": "asgs", **props}})


def config(properties: dict[str, object] | None = None, **kw: object) -> dict[str, object]:
    links = kw.pop("links", None) or {"database": db_link()}
    return json.loads(render(SERVER, "config.json.erb", properties, links=links, **kw))  # type: ignore[arg-type]


def test_spec_defaults_fill_unset_properties() -> None:
    out = config()
    assert out["log_level"] == "info"
    assert out["max_connections"] == 10
    assert out["tags"] == []
    assert out["burst"] == "none"


def test_manifest_properties_override_defaults_and_nest_by_dots() -> None:
    out = config({"log_level": "debug", "limits": {"max_connections": 0}, "tags": ["a"]})
    assert (out["log_level"], out["max_connections"], out["tags"]) == ("debug", 0, ["a"])


def test_false_and_zero_are_values_not_missing() -> None:
    assert render(SERVER, "monit", {"disable": False}, links={"database": db_link()}).startswith("check process")


def test_disable_renders_an_empty_monit_file() -> None:
    assert render(SERVER, "monit", {"disable": True}, links={"database": db_link()}).strip() == ""


def test_undeclared_manifest_properties_are_dropped() -> None:
    merged = merged_properties({"a.b": {"default": 1}, "c": {}}, {"a": {"b": 2, "x": 3}, "zz": 1})
    assert merged == {"a": {"b": 2}, "c": None}
    with pytest.raises(RenderError, match=r"Property 'a\.b' expects a hash, but received 'str'"):
        merged_properties({"a.b": {}}, {"a": "flat"})


def test_if_p_yields_only_when_set() -> None:
    assert config({"limits": {"burst": 5}})["burst"] == 5
    assert config({"limits": {"burst": None}})["burst"] == "none"


def test_spec_fields_as_the_director_gives_them() -> None:
    out = config(spec={"index": 2, "address": "10.0.16.5", "bootstrap": False})
    assert (out["index"], out["address"], out["bootstrap"]) == (2, "10.0.16.5", False)
    assert out["job"] == GROUP != "echo-server", "spec.job.name is the instance group's name, never the job's"


def test_link_properties_instances_and_address() -> None:
    instances = [{"name": "echo-db", "index": i, "id": f"id{i}", "az": "z1", "address": f"10.0.0.{i + 1}",
                  "bootstrap": i == 0} for i in range(2)]
    link = link_from_job(DB, "database", {"db": {"name": "asgs", "password": "secret"}}, instances=instances)
    assert link["properties"] == {"db": {"port": 5432, "name": "asgs"}}, "only the properties the link exposes"
    out = config(links={"database": link})
    assert out["database"] == {"address": "q-s0.echo-db.default.dynamic-asgs.bosh",
                               "hosts": ["10.0.0.1", "10.0.0.2"], "port": 5432, "name": "asgs"}
    manual = link_from_job(DB, "database", {}, address="db.example.internal")
    out = config(links={"database": manual})
    assert out["database"]["address"] == "db.example.internal"
    assert out["database"]["name"] == "fallback", "link.p(name, default) when the provider leaves it unset"


def test_optional_link_present_or_absent() -> None:
    peer = link_from_job(SERVER, "echo", {"port": 9000})
    assert config(links={"database": db_link(), "peer": peer})["peer"] == ["127.0.0.1:9000"]
    assert config()["peer"] is None


def test_missing_property_fails_like_the_director() -> None:
    with pytest.raises(RenderError) as info:
        render(SERVER, "server.key.erb", {}, links={"database": db_link()})
    assert str(info.value) == "Error filling in template 'server.key.erb' (line 1: Can't find property 'tls.key')"
    assert render(SERVER, "server.key.erb", {"tls": {"key": "PEM"}}, links={"database": db_link()}) == "PEM\n"


def test_links_are_checked_against_the_spec() -> None:
    with pytest.raises(RenderError, match=r"consumes link 'database' \(not optional\)"):
        render(SERVER, "config.json.erb", {})
    with pytest.raises(RenderError, match=r"does not consume a link 'nope'"):
        render(SERVER, "config.json.erb", {}, links={"database": db_link(), "nope": db_link()})
    with pytest.raises(RenderError, match=r"provides no link 'nope'"):
        link_from_job(DB, "nope")


def test_records_every_property_and_link_read() -> None:
    rendered = render_full(SERVER, "config.json.erb", {}, links={"database": db_link()})
    assert set(rendered.properties) == {"log_level", "limits.max_connections", "tags", "limits.burst"}
    assert set(rendered.link_properties) == {("database", "db.port"), ("database", "db.name")}
    assert set(rendered.links) == {"database", "peer"}
    assert undeclared_properties(SERVER, rendered) == []


def test_undeclared_read_with_a_default_is_reported(tmp_path: Path) -> None:
    job = tmp_path / "job"
    shutil.copytree(SERVER, job)
    (job / "templates" / "server.key.erb").write_text('<%= p("tls.key") %> <%= p(["timeout", "tls"], 5) %>\n')
    rendered = render_full(job, "server.key.erb", {"tls": {"key": "K"}}, links={"database": db_link()})
    assert rendered.text == 'K {"key"=>"K"}\n'
    assert undeclared_properties(job, rendered) == ["timeout"], "a parent of declared properties counts as declared"


def test_template_errors_name_the_line(tmp_path: Path) -> None:
    job = tmp_path / "job"
    shutil.copytree(SERVER, job)
    (job / "templates" / "server.key.erb").write_text("line one\n<%= nil.upcase %>\n")
    with pytest.raises(RenderError, match=r"server.key.erb' \(line 2: undefined method `upcase' for nil"):
        render(job, "server.key.erb", {}, links={"database": db_link()})
    (job / "templates" / "server.key.erb").write_text("<% if true %>\n")
    with pytest.raises(RenderError, match=r"Error filling in template 'server\.key\.erb'"):
        render(job, "server.key.erb", {}, links={"database": db_link()})
    with pytest.raises(RenderError, match=r"spec lists no template 'other\.erb'"):
        render(job, "other.erb", {}, links={"database": db_link()})


def test_render_job_keys_by_destination() -> None:
    files = render_job(SERVER, {"tls": {"key": "K"}}, links={"database": db_link()})
    assert set(files) == {"monit", "bin/ctl", "config/config.json", "config/certs/server.key"}
    assert files["bin/ctl"].text.startswith("#!/bin/bash")
