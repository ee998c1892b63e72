"""This release deploys into cf-deployment v58 beside silk and cf-networking (issue 12).

Every ops-file of ops-files/cf-deployment/ applies to cf-deployment.yml in the order it documents,
alone and with cf-deployment's disable-dynamic-asgs.yml before or after (identical output); the
result is one the director accepts: no job twice in an instance group, every link of the types at
stake resolved to exactly one provider (bosh_model), and the naive variants of issue 12 refused;
silk's agent enforces no ASGs and cf-networking's syncer is off; no job of ours listens on a port
another job of its instance group names; every template of ours renders with the integrated
manifest's properties and links, and each daemon's own loader accepts what it renders.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from bosh_model import Job, duplicate_jobs, link_errors, placed_jobs, resolve_links
from bosh_tools.gopatch import OpsError
from bosh_tools.monit import syntax_error
from bosh_tools.render import link_from_spec, render_job, undeclared_properties
from bosh_tools.vcap_root import VcapRoot
from cfd import DATA, MODELLED, OPS, STAKE, documented_order, integrate, interpolated, lookup, port_numbers, spec_of
from release_helpers import JOBS, config_loaders

from support.env import require_tools

DISABLE = DATA / "operations" / "disable-dynamic-asgs.yml"
OURS = sorted(OPS.glob("*.yml"))
#: Every companion in its documented order, then cf-deployment's backup-restore ops-file.
EVERYTHING = [DATA / "operations" / "add-persistent-isolation-segment-diego-cell.yml", OPS / "add-dynamic-asgs.yml",
              DATA / "operations" / "use-postgres.yml", OPS / "use-postgres.yml",
              OPS / "add-persistent-isolation-segment-diego-cell.yml", OPS / "turn-off-dynamic-asgs.yml",
              OPS / "turn-off-dynamic-asgs-isolated-diego-cell.yml", DATA / "operations" / "enable-backup-restore.yml"]
SCENARIOS = {**{f.name: documented_order(f) for f in OURS}, "everything": EVERYTHING}
CELLS = ("diego-cell", "isolated-diego-cell")
#: Our daemons' listening ports (properties); every other port property of ours is a peer's.
LISTEN = {"dynamic-asgs-policy-server": ["internal_listen_port", "health_check_port", "metrics_port"],
          "dynamic-asgs-asg-syncer": ["metrics_port"],
          "dynamic-asgs-agent": ["debug_server_port", "force_policy_poll_cycle_port", "metrics_port"],
          "dynamic-asgs-netmon": ["metrics_port"], "dynamic-asgs-cni": []}
PEER_PORTS = {"policy_server.internal_listen_port", "loggregator.v2_api_port", "uaa_port", "cc_port",
              "cc_internal.port", "database.port"}
#: Jobs on the groups of ours that run no listening process (no spec vendored for them).
NO_PORTS = {"binary-buildpack", "dotnet-core-buildpack", "go-buildpack", "java-buildpack", "nodejs-buildpack",
            "nginx-buildpack", "r-buildpack", "php-buildpack", "python-buildpack", "ruby-buildpack",
            "staticfile-buildpack", "cflinuxfs4-rootfs-setup", "bpm", "bosh-dns-aliases"}
EPHEMERAL = range(32768, 61000)  # Linux's default ip_local_port_range: a listener there can lose its port


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def group_jobs(manifest: dict[str, Any], group: str) -> dict[str, Job]:
    return {job.name: job for job in placed_jobs(manifest)[group]}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """(name, manifest) of each documented order, identical with cf-deployment's disable file anywhere."""
    order = SCENARIOS[request.param]
    manifest = integrate(order)
    assert dump(integrate([DISABLE, *order])) == dump(manifest), "disable-dynamic-asgs.yml first changes it"
    assert dump(integrate([*order, DISABLE])) == dump(manifest), "disable-dynamic-asgs.yml last changes it"
    return request.param, manifest


def test_every_ops_file_documents_an_order_that_ends_with_itself() -> None:
    assert {f.name for f in OURS} == {"add-dynamic-asgs.yml", "use-postgres.yml", "turn-off-dynamic-asgs.yml",
                                      "add-persistent-isolation-segment-diego-cell.yml",
                                      "turn-off-dynamic-asgs-isolated-diego-cell.yml"}
    for ops_file in OURS:
        order = documented_order(ops_file)
        assert order[-1] == ops_file and all(p.is_file() for p in order), order
        assert OPS / "add-dynamic-asgs.yml" in order, f"{ops_file.name} is a companion of add-dynamic-asgs.yml"


def test_the_result_is_one_the_director_accepts(scenario: tuple[str, dict[str, Any]]) -> None:
    name, manifest = scenario
    assert duplicate_jobs(manifest) == []
    releases = {r["name"] for r in manifest["releases"]}
    assert "dynamic-asgs" in releases
    for group, jobs in placed_jobs(manifest).items():
        for job in jobs:
            assert job.release in releases, f"{group}/{job.name}: release {job.release} is not in the manifest"
            if job.release in MODELLED:
                assert spec_of(job.release, job.name) is not None, f"no spec for {job.release}/{job.name}"
    links = resolve_links(manifest, spec_of, STAKE)
    assert link_errors(links) == [], name
    assert {(link.job, link.name) for link in links} >= {
        ("policy-server-internal", "dbconn"), ("policy-server-asg-syncer", "dbconn"), ("silk-cni", "vpa"),
        ("silk-daemon", "vpa"), ("vxlan-policy-agent", "cni_config"), ("vxlan-policy-agent", "iptables"),
        ("dynamic-asgs-asg-syncer", "dynamic-asgs-db"), ("dynamic-asgs-agent", "cni_config")}


def test_the_go_jobs_enforce_no_asgs_and_ours_run_beside_them(scenario: tuple[str, dict[str, Any]]) -> None:
    name, manifest = scenario
    api = group_jobs(manifest, "api")
    assert api["policy-server-asg-syncer"].properties["disable"] is True
    assert {"policy-server", "policy-server-internal", "dynamic-asgs-policy-server",
            "dynamic-asgs-asg-syncer"} <= set(api), "cf-networking's policy servers stay"
    for group in CELLS:
        if group not in placed_jobs(manifest):
            continue
        jobs = group_jobs(manifest, group)
        assert jobs["vxlan-policy-agent"].properties["enable_asg_syncing"] is False, group
        assert jobs["dynamic-asgs-agent"].release == "dynamic-asgs", group
        assert {"silk-cni", "silk-daemon", "netmon"} <= set(jobs) and "dynamic-asgs-cni" not in jobs
        off = name.startswith("turn-off") or name == "everything"
        assert jobs["dynamic-asgs-agent"].properties.get("enable_asg_syncing", True) is not off, group
    assert (api["dynamic-asgs-asg-syncer"].properties.get("disable", False)
            is (name.startswith("turn-off") or name == "everything"))


def test_each_link_of_ours_resolves_to_the_provider_it_is_meant_for(scenario: tuple[str, dict[str, Any]]) -> None:
    _, manifest = scenario
    resolved = {(link.group, link.job, link.name): link.provider for link in resolve_links(manifest, spec_of, STAKE)}
    assert resolved[("api", "dynamic-asgs-asg-syncer", "dynamic-asgs-db")] == (
        "api", "dynamic-asgs-policy-server", "dynamic-asgs-db")
    assert resolved[("api", "policy-server-internal", "dbconn")] == ("api", "policy-server", "dbconn")
    for group in CELLS:
        if group in placed_jobs(manifest):
            assert resolved[(group, "dynamic-asgs-agent", "cni_config")] == ("diego-cell", "silk-cni", "cni_config")
            assert resolved[(group, "silk-cni", "vpa")] == ("diego-cell", "vxlan-policy-agent", "vpa")
            assert resolved[(group, "dynamic-asgs-agent", "iptables")] == ("diego-cell", "garden", "iptables")


def test_the_model_refuses_the_naive_variants_of_issue_12() -> None:
    manifest = integrate([OPS / "add-dynamic-asgs.yml", DATA / "operations" / "enable-backup-restore.yml"])

    def retyped(release: str, job: str) -> dict[str, Any] | None:
        """Our DB link typed dbconn, as cf-networking's."""
        spec = spec_of(release, job)
        if release == "dynamic-asgs" and spec is not None:
            for entry in [*(spec.get("provides") or []), *(spec.get("consumes") or [])]:
                if entry["type"] == "dynamic-asgs-db":
                    entry["type"] = "dbconn"
        return spec

    errors = link_errors(resolve_links(manifest, retyped, STAKE))
    refused = {e.split("from job '")[1].split("'")[0] for e in errors}
    assert refused == {"policy-server-internal", "policy-server-asg-syncer", "bbr-cfnetworkingdb",
                       "dynamic-asgs-asg-syncer"}, errors
    assert all("Multiple link providers found" in e for e in errors)

    swapped = integrate([])
    [cell] = [g for g in swapped["instance_groups"] if g["name"] == "diego-cell"]
    [vpa] = [j for j in cell["jobs"] if j["name"] == "vxlan-policy-agent"]
    vpa["release"] = "dynamic-asgs"
    release_swap = {"name": "vxlan-policy-agent", "provides": [{"name": "vpa", "type": "vpa"}]}

    def swap(release: str, job: str) -> dict[str, Any] | None:
        """The first design: this release's agent under silk's name, providing type vpa."""
        return release_swap if (release, job) == ("dynamic-asgs", "vxlan-policy-agent") else spec_of(release, job)

    errors = link_errors(resolve_links(swapped, swap, STAKE))
    assert {e.split("from job '")[1].split("'")[0] for e in errors} == {"silk-cni", "silk-daemon"}, errors
    assert all("type 'policy-agent'" in e and "No link providers found" in e for e in errors)


def test_dynamic_asgs_cni_or_a_same_named_job_cannot_join_a_silk_cell() -> None:
    manifest = integrate([OPS / "add-dynamic-asgs.yml"])
    [cell] = [g for g in manifest["instance_groups"] if g["name"] == "diego-cell"]
    cell["jobs"].append({"name": "dynamic-asgs-cni", "release": "dynamic-asgs"})
    errors = link_errors(resolve_links(manifest, spec_of, STAKE))
    assert {e.split("from job '")[1].split("'")[0] for e in errors} == {"vxlan-policy-agent", "dynamic-asgs-agent"}
    assert all("type 'cni_config'" in e and "Multiple link providers found" in e for e in errors)
    cell["jobs"][-1] = {"name": "vxlan-policy-agent", "release": "dynamic-asgs"}
    assert duplicate_jobs(manifest) == [
        "Colocated job 'vxlan-policy-agent' is already added to the instance group 'diego-cell'"]


@pytest.mark.parametrize(("order", "message"), [
    (["operations/use-postgres.yml", "add-dynamic-asgs.yml"], "apply operations/use-postgres.yml after this file"),
    (["add-dynamic-asgs.yml", "use-postgres.yml"], "apply operations/use-postgres.yml before this file"),
    (["turn-off-dynamic-asgs.yml"], "apply add-dynamic-asgs.yml before this file"),
    (["add-dynamic-asgs.yml", "add-persistent-isolation-segment-diego-cell.yml"],
     "apply operations/add-persistent-isolation-segment-diego-cell.yml before this file"),
])
def test_a_wrong_order_fails_naming_the_right_one(order: list[str], message: str) -> None:
    with pytest.raises(OpsError) as info:
        integrate([DATA / name if name.startswith("operations/") else OPS / name for name in order])
    assert message in str(info.value)


def our_ports(job: Job) -> dict[str, int]:
    spec = spec_of(job.release, job.name) or {}
    ports = {}
    for name in LISTEN[job.name]:
        found, value = lookup(job.properties, name)
        ports[name] = value if found else spec["properties"][name]["default"]
    return {name: port for name, port in ports.items() if port}


def test_every_port_property_of_ours_is_a_listener_or_a_peers() -> None:
    for job, listen in LISTEN.items():
        names = {n for n in (spec_of("dynamic-asgs", job) or {})["properties"] if n.endswith("port")}
        assert names == set(listen) | (names & PEER_PORTS), f"{job}: classify {names - set(listen) - PEER_PORTS}"


def test_no_job_of_ours_listens_on_a_port_its_instance_group_uses(scenario: tuple[str, dict[str, Any]]) -> None:
    _, manifest = scenario
    for group, jobs in placed_jobs(manifest).items():
        ours = {job.name: our_ports(job) for job in jobs if job.release == "dynamic-asgs"}
        if not ours:
            continue
        taken: dict[int, str] = {}
        for job in jobs:
            if job.release == "dynamic-asgs":
                continue
            spec = spec_of(job.release, job.name)
            assert spec is not None or job.name in NO_PORTS, f"{group}/{job.name}: no spec, ports unknown"
            taken.update(dict.fromkeys(port_numbers(job, spec or {}), job.name))
            if job.name == "garden-cni":
                start, size = (spec or {})["properties"]["nat_port_range_start"]["default"], 5000
                taken.update(dict.fromkeys(range(start, start + size), "garden-cni (container port mappings)"))
        listening = [(port, f"{job}.{name}") for job, ports in ours.items() for name, port in ports.items()]
        assert len({p for p, _ in listening}) == len(listening), f"{group}: our jobs share a port: {listening}"
        for port, what in listening:
            assert port not in taken, f"{group}: {what} = {port} is {taken.get(port)}'s"
            assert port not in EPHEMERAL, f"{group}: {what} = {port} is in the ephemeral port range"
    api = {j.name: j for j in placed_jobs(manifest)["api"]}
    assert our_ports(api["dynamic-asgs-policy-server"])["internal_listen_port"] == 4013
    assert 4003 in port_numbers(api["policy-server-internal"], spec_of("cf-networking", "policy-server-internal") or {})


def links_of(manifest: dict[str, Any], job: Job) -> dict[str, Any]:
    """The links the director gives ``job``, built from the providers it resolves them to."""
    links = {}
    jobs = {(j.group, j.name): j for group in placed_jobs(manifest).values() for j in group}
    for link in resolve_links(manifest, spec_of, STAKE):
        if (link.group, link.job) != (job.group, job.name) or link.provider is None:
            continue
        group, name, provided = link.provider
        provider = jobs[(group, name)]
        spec = spec_of(provider.release, provider.name)
        assert spec is not None
        links[link.name] = link_from_spec(spec, provided, provider.properties, group=group)
    return links


def test_every_template_of_ours_renders_and_each_daemon_loads_its_config(
        scenario: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    require_tools("ruby")
    _, raw = scenario
    manifest = interpolated(raw)
    for group, jobs in placed_jobs(manifest).items():
        for job in (j for j in jobs if j.release == "dynamic-asgs"):
            files = render_job(JOBS / job.name, job.properties, links=links_of(manifest, job))
            for rendered in files.values():
                assert undeclared_properties(JOBS / job.name, rendered) == []
            assert syntax_error(files["monit"].text) is None
            root = VcapRoot(tmp_path / group)
            job_dir = root.install_job(job.name, {dest: r.text for dest, r in files.items()})
            destination, loader = config_loaders[job.name]
            assert loader(job_dir / destination)
            config = json.loads((job_dir / destination).read_text())
            named = [v for v in _strings(config) if v.startswith(f"{root.path}/jobs/")]
            assert named and all(Path(v).is_file() for v in named), f"{group}/{job.name} names files it lacks"


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_the_integrated_agent_matches_silk_cni_and_the_policy_server_uses_the_seeded_db(tmp_path: Path) -> None:
    require_tools("ruby")
    base = interpolated(integrate(documented_order(OPS / "add-dynamic-asgs.yml")))
    cell = group_jobs(base, "diego-cell")
    cell["silk-cni"].entry.setdefault("properties", {}).update(
        {"iptables_logging": True, "deny_networks": {"always": ["10.7.0.0/16"]}})
    loaded = {}
    for group, name in (("api", "dynamic-asgs-policy-server"), ("api", "dynamic-asgs-asg-syncer"),
                        ("diego-cell", "dynamic-asgs-agent")):
        job = group_jobs(base, group)[name]
        files = render_job(JOBS / name, job.properties, links=links_of(base, job))
        path = tmp_path / name / config_loaders[name][0]
        path.parent.mkdir(parents=True)
        path.write_text(files[config_loaders[name][0]].text)
        loaded[name] = config_loaders[name][1](path)
    agent = loaded["dynamic-asgs-agent"]
    assert agent.chains.asg_logging is True and [str(n) for n in agent.chains.deny_networks.always] == ["10.7.0.0/16"]
    assert agent.policy_server_url == "https://policy-server.service.cf.internal:4013"
    assert agent.commands[4] == ("/sbin/iptables-restore", "/sbin/iptables-save"), "garden's iptables_bin_dir"
    db = loaded["dynamic-asgs-policy-server"].database
    assert (db.type, db.host, db.port, db.database_name, db.require_ssl) == (
        "mysql", "sql-db.service.cf.internal", 3306, "dynamic_asgs", True)
    syncer_db = loaded["dynamic-asgs-asg-syncer"].database
    assert syncer_db == dataclasses.replace(db, ca_cert=syncer_db.ca_cert), "the same DB through the link"
    assert syncer_db.ca_cert == "/var/vcap/jobs/dynamic-asgs-asg-syncer/config/certs/database_ca.crt"
    seeded = group_jobs(base, "database")["pxc-mysql"].properties["seeded_databases"]
    assert {"name": "dynamic_asgs", "username": "dynamic_asgs", "password": db.password} in seeded
    postgres = interpolated(integrate(documented_order(OPS / "use-postgres.yml")))
    pg = group_jobs(postgres, "api")["dynamic-asgs-policy-server"].properties["database"]
    assert (pg["type"], pg["port"], pg["name"]) == ("postgres", 5524, "dynamic_asgs")
    roles = group_jobs(postgres, "database")["postgres"].properties["databases"]["roles"]
    assert {"name": "dynamic_asgs", "password": pg["password"]} in roles
