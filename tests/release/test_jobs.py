"""The release's jobs render as the director renders them, and what they render is what the daemons accept.

For every job: spec defaults (plus the few properties without a default) and the example
manifest's properties, alone and with each ops-file, render through the Ruby harness; each JSON
config is loaded by the daemon's own loader; every property a template reads is declared in the
spec; `monit -t` accepts every monit file; `disable: true` renders an empty monit file; each
daemon's bin/ctl is the shared job-ctl with its user and secrets, and every job directory a
rendered file names is the job's own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from bosh_tools.gopatch import apply_ops_files
from bosh_tools.monit import syntax_error
from bosh_tools.release_layout import check_jobs
from bosh_tools.render import (
    Rendered,
    RenderError,
    link_from_job,
    link_from_spec,
    load_job_spec,
    render,
    render_job,
    undeclared_properties,
)
from release_helpers import (
    GROUPS,
    JOBS,
    MANIFEST,
    OPS_FILES,
    RELEASE,
    config_loaders,
    interpolate,
    job_properties,
    links_for,
    render_group_job,
)

from dynamic_asgs.asg.translate import ChainLayout
from support.env import require_tools

PEM = "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----"
KEY = "-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----"
CFD_SPECS = RELEASE / "tests" / "data" / "cf-deployment" / "job-specs"
#: The properties without a default, per job: the least a manifest must give.
REQUIRED: dict[str, dict[str, Any]] = {
    "dynamic-asgs-policy-server": {"ca_cert": PEM, "server_cert": PEM, "server_key": KEY},
    "dynamic-asgs-asg-syncer": {"uaa_client_secret": "secret"},
    "dynamic-asgs-agent": {"ca_cert": PEM, "client_cert": PEM, "client_key": KEY},
    "dynamic-asgs-netmon": {},
    "dynamic-asgs-cni": {},
}
#: Daemon jobs: the user job-ctl runs them as, their `dynamic-asgs` subcommand and their secrets.
DAEMONS: dict[str, tuple[str, str, list[str]]] = {
    "dynamic-asgs-policy-server": ("vcap", "policy-server", ["config/certs/server.key", "config/policy-server.json"]),
    "dynamic-asgs-asg-syncer": ("vcap", "policy-server-asg-syncer",
                                ["config/certs/cc_internal_client.key", "config/policy-server-asg-syncer.json"]),
    "dynamic-asgs-agent": ("root", "vxlan-policy-agent",
                           ["config/certs/client.key", "config/certs/loggregator_client.key"]),
    "dynamic-asgs-netmon": ("root", "netmon", []),
}
JOB_CTL = "exec /var/vcap/packages/dynamic-asgs/bin/job-ctl \"$0\" "


@pytest.fixture(autouse=True)
def _ruby() -> None:
    require_tools("ruby")


def test_the_release_has_the_five_jobs_and_each_is_well_formed() -> None:
    assert sorted(p.name for p in JOBS.iterdir()) == sorted(GROUPS) == sorted(REQUIRED)
    assert all(job.startswith("dynamic-asgs-") for job in GROUPS), "names no Go job of silk or cf-networking has"
    assert check_jobs(RELEASE) == []


@pytest.mark.parametrize("job", sorted(GROUPS))
def test_every_job_uses_both_packages_and_every_listed_file_exists(job: str) -> None:
    spec = load_job_spec(JOBS / job)
    assert spec["packages"] == ["python3", "dynamic-asgs"]
    for source in spec["templates"]:
        assert (JOBS / job / "templates" / source).is_file(), source
    for name, definition in spec["properties"].items():
        assert definition.get("description"), f"{job}: property {name} has no description"


def check_loads(job: str, files: dict[str, Rendered], tmp_path: Path) -> Any:
    """Write the job's rendered config and load it with the daemon's own loader."""
    destination, loader = config_loaders[job]
    path = tmp_path / job / destination
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(files[destination].text)
    return loader(path)


def check_declared(job: str, files: dict[str, Rendered]) -> None:
    for destination, rendered in files.items():
        assert undeclared_properties(JOBS / job, rendered) == [], f"{job} {destination} reads undeclared properties"


#: /var/vcap/data directories every CNI and agent of a cell shares with silk's (the store, the iptables lock).
SHARED_DATA = {"container-metadata", "garden-cni"}


def own_paths(job: str, files: dict[str, Rendered]) -> None:
    """Every /var/vcap/{jobs,sys,data,store}/<dir> a rendered file names is ``job``'s own directory.

    Besides: the cell's shared data directories, and the policy server's store (its embedded DB,
    which the syncer reads). Only monit names the run directory (job-ctl makes it from its path).
    """
    for destination, rendered in files.items():
        for kind, name in re.findall(r"/var/vcap/(jobs|sys/run|sys/log|data|store)/([A-Za-z0-9_.-]+)", rendered.text):
            if (kind, name) == ("data", "packages") or (kind == "data" and name in SHARED_DATA):
                continue
            if (job, kind, name) == ("dynamic-asgs-asg-syncer", "store", "dynamic-asgs-policy-server"):
                continue
            assert name == job, f"{job} {destination} names /var/vcap/{kind}/{name}"
            if kind.startswith("sys/"):
                assert destination == "monit", f"{job} {destination} names /var/vcap/{kind}/{name}"


@pytest.mark.parametrize("job", sorted(GROUPS))
def test_spec_defaults_render_and_the_daemon_accepts_them(job: str, tmp_path: Path) -> None:
    files = render_job(JOBS / job, REQUIRED[job], links=links_for(job))
    check_declared(job, files)
    own_paths(job, files)
    assert check_loads(job, files, tmp_path)
    assert syntax_error(files["monit"].text) is None
    if job in DAEMONS:
        monit = files["monit"].text
        assert f"check process {job}\n" in monit
        assert f"with pidfile /var/vcap/sys/run/{job}/{job}.pid\n" in monit, "job-ctl's pidfile"
        assert f'start program "/var/vcap/jobs/{job}/bin/ctl start"' in monit
    else:
        assert files["monit"].text.strip() == "", "the CNI job has no process"


@pytest.mark.parametrize("job", sorted(DAEMONS))
def test_ctl_is_the_shared_job_ctl_with_the_daemons_user_and_secrets(job: str) -> None:
    user, daemon, secrets = DAEMONS[job]
    files = render_job(JOBS / job, REQUIRED[job], links=links_for(job))
    ctl = files["bin/ctl"].text
    call = ctl[ctl.index(JOB_CTL):].replace("\\\n", " ")
    args = call.split()
    assert args[3:5] == ['"${1:-}"', "--user"] and args[5] == user
    assert [args[i + 1] for i, a in enumerate(args) if a == "--secret"] == secrets
    assert args[args.index("--") + 1:] == [daemon, f"config/{daemon}.json"]
    assert f"config/{daemon}.json" in files, "the config job-ctl passes is one the job renders"
    assert all(secret in files for secret in secrets)
    assert job not in ctl, "job-ctl takes the job's name from the script's own path"
    assert ("--store" in args) == (job == "dynamic-asgs-policy-server"), "only the policy server's SQLite file"


def test_defaults_keep_the_go_jobs_meanings_on_ports_of_their_own(tmp_path: Path) -> None:
    syncer = check_loads("dynamic-asgs-asg-syncer", render_job(
        JOBS / "dynamic-asgs-asg-syncer", REQUIRED["dynamic-asgs-asg-syncer"],
        links=links_for("dynamic-asgs-asg-syncer")), tmp_path)
    assert (syncer.poll_interval, syncer.retry_deadline, syncer.uaa_client) == (60, 300, "network-policy")
    assert syncer.uaa_url == "https://uaa.service.cf.internal:8443" and syncer.skip_ssl_validation is False
    assert syncer.cc_internal_url == "https://cloud-controller-ng.service.cf.internal:9023"
    assert syncer.database.type == "sqlite" and syncer.database.timeout == 120
    agent = check_loads("dynamic-asgs-agent", render_job(JOBS / "dynamic-asgs-agent", REQUIRED["dynamic-asgs-agent"]),
                        tmp_path)
    assert (agent.enable_asg_syncing, agent.poll_interval, agent.force_port, agent.debug_port) == (True, 60, 8732, 8731)
    assert agent.policy_server_url == "https://policy-server.service.cf.internal:4013"
    assert agent.fingerprint_file == Path("/var/vcap/data/dynamic-asgs-agent/chain-fingerprints.json")
    assert (agent.settle_seconds, agent.watch_seconds, agent.verify_interval) == (10, 60, 60)
    assert agent.chains.layout is ChainLayout.SHARED
    tuned = check_loads("dynamic-asgs-agent", render_job(
        JOBS / "dynamic-asgs-agent", {**REQUIRED["dynamic-asgs-agent"], "new_container_settle_seconds": 3,
                                      "new_container_watch_seconds": 120, "kernel_verify_interval_seconds": 300,
                                      "asg_chain_layout": "per-container"}),
        tmp_path / "tuned")
    assert (tuned.settle_seconds, tuned.watch_seconds, tuned.verify_interval) == (3, 120, 300)
    assert tuned.chains.layout is ChainLayout.PER_CONTAINER
    server = check_loads("dynamic-asgs-policy-server", render_job(
        JOBS / "dynamic-asgs-policy-server", REQUIRED["dynamic-asgs-policy-server"]), tmp_path)
    assert (server.port, server.health_port, server.database.timeout) == (4013, 31947, 120)
    assert (server.limits.max_head_bytes, server.limits.max_blocking_queries_per_client) == (65536, 4)
    assert (syncer.max_pages, syncer.max_response_bytes, syncer.listing_deadline) == (20, 64 << 20, 300)
    assert server.database.database_name == "/var/vcap/store/dynamic-asgs-policy-server/policy_server.db"
    assert server.database.database_name == syncer.database.database_name, "SQLite: the syncer shares the file"
    netmon = check_loads("dynamic-asgs-netmon", render_job(JOBS / "dynamic-asgs-netmon", {}), tmp_path)
    assert (netmon["poll_interval"], netmon["interface_name"]) == (30, "silk-vtep")


def test_the_bounds_on_what_peers_send_are_properties(tmp_path: Path) -> None:
    server = check_loads("dynamic-asgs-policy-server", render_job(
        JOBS / "dynamic-asgs-policy-server", {**REQUIRED["dynamic-asgs-policy-server"], "max_request_head_bytes": 8192,
                                              "max_request_headers": 20, "request_head_timeout_seconds": 2,
                                              "request_body_timeout_seconds": 3, "max_blocking_queries": 50,
                                              "max_blocking_queries_per_client": 1}), tmp_path / "server")
    limits = server.limits
    assert (limits.max_head_bytes, limits.max_headers, limits.head_timeout, limits.body_timeout,
            limits.max_blocking_queries, limits.max_blocking_queries_per_client) == (8192, 20, 2, 3, 50, 1)
    assert (server.silent_after_intervals, server.report_flush_interval, server.forget_silent_cells_after) == (
        3, 1.0, 168 * 3600)
    syncer = check_loads("dynamic-asgs-asg-syncer", render_job(
        JOBS / "dynamic-asgs-asg-syncer", {**REQUIRED["dynamic-asgs-asg-syncer"], "cc_max_pages": 40,
                                           "cc_max_response_bytes": 1 << 20, "cc_listing_deadline_seconds": 90},
        links=links_for("dynamic-asgs-asg-syncer")), tmp_path / "syncer")
    assert (syncer.max_pages, syncer.max_response_bytes, syncer.listing_deadline) == (40, 1 << 20, 90)


def test_the_fleet_audit_settings_are_properties(tmp_path: Path) -> None:
    server = check_loads("dynamic-asgs-policy-server", render_job(
        JOBS / "dynamic-asgs-policy-server", {**REQUIRED["dynamic-asgs-policy-server"],
                                              "fleet": {"silent_after_intervals": 5, "report_flush_interval_ms": 0,
                                                        "forget_silent_cells_after_hours": 1.5}}), tmp_path)
    assert (server.silent_after_intervals, server.report_flush_interval, server.forget_silent_cells_after) == (
        5, 0.0, 5400.0)


def test_the_agent_takes_the_chain_shape_from_the_cni_config_link(tmp_path: Path) -> None:
    alone = check_loads("dynamic-asgs-agent", render_job(JOBS / "dynamic-asgs-agent", REQUIRED["dynamic-asgs-agent"]),
                        tmp_path / "alone")
    assert (alone.chains.asg_logging, alone.chains.denied_logs_per_sec, alone.chains.conn_limit) == (False, 1, None)
    cni = {"iptables_logging": True, "iptables_denied_logs_per_sec": 3, "deny_networks": {"always": ["10.9.0.0/16"]},
           "outbound_connections": {"limit": True, "burst": 7, "rate_per_sec": 5}}
    link = link_from_job(JOBS / "dynamic-asgs-cni", "cni_config", cni)
    shaped = check_loads("dynamic-asgs-agent", render_job(JOBS / "dynamic-asgs-agent", REQUIRED["dynamic-asgs-agent"],
                                                          links={"cni_config": link}), tmp_path / "shaped")
    chains = shaped.chains
    assert (chains.asg_logging, chains.denied_logs_per_sec) == (True, 3)
    assert [str(n) for n in chains.deny_networks.always] == ["10.9.0.0/16"]
    assert chains.conn_limit is not None and (chains.conn_limit.burst, chains.conn_limit.rate_per_sec) == (7, 5)
    assert chains.conn_limit.logging, "silk: connections over the limit are logged when iptables_logging is on"
    assert "iptables_logging" not in load_job_spec(JOBS / "dynamic-asgs-agent")["properties"], (
        "on silk's agent that name means c2c logging")


def test_iptables_tools_come_from_gardens_bin_dir(tmp_path: Path) -> None:
    garden = {"name": "garden", "provides": [{"name": "iptables", "type": "iptables",
                                              "properties": ["garden.iptables_bin_dir"]}],
              "properties": {"garden.iptables_bin_dir": {"default": "/sbin"}}}
    link = link_from_spec(garden, "iptables", {"garden": {"iptables_bin_dir": "/var/vcap/packages/iptables/sbin"}})
    agent = check_loads("dynamic-asgs-agent", render_job(
        JOBS / "dynamic-asgs-agent", {**REQUIRED["dynamic-asgs-agent"], "iptables_save_command": "/opt/save"},
        links={"iptables": link}), tmp_path)
    assert agent.commands[4] == ("/var/vcap/packages/iptables/sbin/iptables-restore", "/opt/save")
    netmon = check_loads("dynamic-asgs-netmon", render_job(JOBS / "dynamic-asgs-netmon", {}, links={"iptables": link}),
                         tmp_path)
    assert netmon["iptables_save_command"] == "/var/vcap/packages/iptables/sbin/iptables-save"


@pytest.mark.parametrize("ops", [None, *OPS_FILES], ids=lambda p: p.name if p else "manifest")
def test_manifest_with_each_ops_file_renders_and_loads(ops: Path | None, tmp_path: Path) -> None:
    manifest = interpolate(apply_ops_files(MANIFEST, *([ops] if ops else [])))
    loaded = {}
    for job, group in GROUPS.items():
        files = render_group_job(manifest, group, job)
        check_declared(job, files)
        own_paths(job, files)
        loaded[job] = check_loads(job, files, tmp_path)
        assert syntax_error(files["monit"].text) is None, f"{job}: monit -t refuses its monit file"
    agent, cni = loaded["dynamic-asgs-agent"], loaded["dynamic-asgs-cni"]
    assert cni["policy_agent_force_poll_address"] == f"127.0.0.1:{agent.force_port}"
    assert cni["iptables_asg_logging"] == agent.chains.asg_logging
    assert cni["outbound_connections"]["limit"] == (agent.chains.conn_limit is not None)
    assert loaded["dynamic-asgs-asg-syncer"].database == loaded["dynamic-asgs-policy-server"].database


def test_ops_files_change_what_the_daemons_load(tmp_path: Path) -> None:
    def load(*ops: str) -> dict[str, Any]:
        manifest = interpolate(apply_ops_files(MANIFEST, *(RELEASE / "ops-files" / o for o in ops)))
        return {job: check_loads(job, render_group_job(manifest, group, job), tmp_path / "-".join(ops))
                for job, group in GROUPS.items()}

    base = load()
    assert base["dynamic-asgs-agent"].enable_asg_syncing is True
    off = load("disable-dynamic-asgs.yml")
    assert off["dynamic-asgs-agent"].enable_asg_syncing is False
    polls = load("set-asg-poll-intervals.yml")
    assert (polls["dynamic-asgs-asg-syncer"].poll_interval, polls["dynamic-asgs-agent"].poll_interval) == (7, 11)
    assert load("set-asg-blocking-wait.yml")["dynamic-asgs-agent"].blocking_wait == 13
    pg = load("use-postgres.yml", "use-database-tls.yml")
    for job in ("dynamic-asgs-policy-server", "dynamic-asgs-asg-syncer"):
        db = pg[job].database
        assert (db.type, db.host, db.port, db.user, db.password) == ("postgres", "db.example.internal", 5432,
                                                                     "policy", "db-secret")
        assert db.require_ssl and db.ca_cert == f"/var/vcap/jobs/{job}/config/certs/database_ca.crt"
    assert load("use-mysql.yml")["dynamic-asgs-policy-server"].database.port == 3306
    logging = load("enable-asg-logging.yml")
    assert logging["dynamic-asgs-agent"].chains.asg_logging and logging["dynamic-asgs-cni"]["iptables_asg_logging"]
    deny = load("set-deny-networks.yml")
    networks = deny["dynamic-asgs-agent"].chains.deny_networks
    assert [str(n) for n in networks.always] == ["169.254.0.0/16", "fd00::/8"]
    assert [str(n) for n in networks.running] == ["10.0.0.0/8"]
    assert deny["dynamic-asgs-cni"]["deny_networks"]["always"] == ["169.254.0.0/16"], "the plugin's are IPv4"
    limited = load("limit-outbound-connections.yml")
    limit = limited["dynamic-asgs-agent"].chains.conn_limit
    assert limit is not None and (limit.burst, limit.rate_per_sec) == (500, 50)
    assert limited["dynamic-asgs-cni"]["outbound_connections"]["burst"] == 500
    v6 = load("enable-ipv6.yml")
    assert v6["dynamic-asgs-agent"].enable_ipv6 and v6["dynamic-asgs-netmon"]["enable_ipv6"]
    assert v6["dynamic-asgs-cni"]["enable_ipv6"]
    nft = load("use-nft-iptables.yml")
    assert nft["dynamic-asgs-agent"].commands[4] == ("iptables-nft-restore", "iptables-nft-save")
    assert nft["dynamic-asgs-cni"]["iptables_restore_command"] == "iptables-nft-restore"


def test_disable_renders_an_empty_monit_file() -> None:
    manifest = interpolate(apply_ops_files(MANIFEST, RELEASE / "ops-files" / "disable-dynamic-asgs.yml"))
    syncer = job_properties(manifest, "api", "dynamic-asgs-asg-syncer")
    assert render(JOBS / "dynamic-asgs-asg-syncer", "monit", syncer, links=links_for(
        "dynamic-asgs-asg-syncer", manifest)).strip() == ""
    for job in DAEMONS:
        text = render(JOBS / job, "monit", {**REQUIRED[job], "disable": True}, links=links_for(job))
        assert text.strip() == "" and syntax_error(text) is None
    pre_start = render(JOBS / "dynamic-asgs-policy-server", "pre-start.erb",
                       {**REQUIRED["dynamic-asgs-policy-server"], "disable": True})
    assert "job-ctl" not in pre_start and "exit 0" in pre_start


def test_health_checks_use_the_configured_ports() -> None:
    server = render(JOBS / "dynamic-asgs-policy-server", "monit",
                    {**REQUIRED["dynamic-asgs-policy-server"], "health_check_port": 4242})
    assert 'port 4242 protocol http request "/health"' in server
    agent = render(JOBS / "dynamic-asgs-agent", "monit", {**REQUIRED["dynamic-asgs-agent"], "debug_server_port": 4343})
    assert 'port 4343 protocol http request "/log-level"' in agent


def test_the_policy_server_migrates_in_pre_start_and_the_links_have_types_of_their_own() -> None:
    files = render_job(JOBS / "dynamic-asgs-policy-server", REQUIRED["dynamic-asgs-policy-server"])
    pre_start = files["bin/pre-start"].text
    assert JOB_CTL + "run --user vcap --store" in pre_start
    assert "-- policy-server config/policy-server.json --migrate-only" in pre_start
    types = {job: ({(p["name"], p["type"]) for p in load_job_spec(JOBS / job).get("provides") or []},
                   {(c["name"], c["type"]) for c in load_job_spec(JOBS / job).get("consumes") or []})
             for job in GROUPS}
    assert types["dynamic-asgs-policy-server"] == ({("dynamic-asgs-db", "dynamic-asgs-db")}, set())
    assert types["dynamic-asgs-asg-syncer"] == (set(), {("dynamic-asgs-db", "dynamic-asgs-db")})
    assert types["dynamic-asgs-agent"] == ({("dynamic-asgs-agent", "dynamic-asgs-agent")},
                                           {("cni_config", "cni_config"), ("iptables", "iptables")})
    assert types["dynamic-asgs-cni"] == ({("cni_config", "cni_config")}, {("dynamic-asgs-agent", "dynamic-asgs-agent")})
    agent_link = {p["name"]: p for p in load_job_spec(JOBS / "dynamic-asgs-agent")["provides"]}["dynamic-asgs-agent"]
    assert "force_policy_poll_cycle_port" in agent_link["properties"]
    silk_cni = yaml.safe_load((CFD_SPECS / "silk-release" / "silk-cni.spec.yml").read_text())
    [silk_link] = [p for p in silk_cni["provides"] if p["name"] == "cni_config"]
    [ours] = [p for p in load_job_spec(JOBS / "dynamic-asgs-cni")["provides"] if p["name"] == "cni_config"]
    assert set(ours["properties"]) == set(silk_link["properties"]) - {"outbound_connections.dry_run"}, (
        "the agent reads the same properties from either CNI (dry_run: silk's agent ignores it too)")


def test_cni_job_installs_the_plugin_and_a_conflist() -> None:
    files = render_job(JOBS / "dynamic-asgs-cni", {"plugin_directories": ["/var/vcap/packages/runc-cni/bin"]},
                       links=links_for("dynamic-asgs-cni"))
    assert "exec /var/vcap/packages/dynamic-asgs/bin/dynamic-asgs-cni \"$@\"" in files["bin/dynamic-asgs-cni"].text
    assert ("ln -sfn /var/vcap/jobs/dynamic-asgs-cni/bin/dynamic-asgs-cni "
            "/var/vcap/packages/runc-cni/bin/dynamic-asgs-cni") in files["bin/pre-start"].text
    conflist = json.loads(files["config/cni/dynamic-asgs.conflist"].text)
    assert conflist["cniVersion"] == "1.0.0"
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "dynamic-asgs-cni"], "chained after the main plugin"


@pytest.mark.parametrize(("job", "properties", "message"), [
    ("dynamic-asgs-policy-server", {"database": {"type": "oracle"}},
     "database.type must be sqlite, postgres or mysql, not 'oracle'"),
    ("dynamic-asgs-policy-server", {"database": {"type": "postgres"}},
     "database.host is required for database.type postgres"),
    ("dynamic-asgs-policy-server", {}, "Can't find property 'ca_cert'"),
    ("dynamic-asgs-asg-syncer", {"cc_internal": {"client_cert": PEM}},
     "cc_internal.client_cert and cc_internal.client_key must be set together"),
    ("dynamic-asgs-agent", {"loggregator": {"use_v2_api": True}},
     "loggregator.ca_cert is required when loggregator.use_v2_api is true"),
    ("dynamic-asgs-agent", {"container_metadata_file": "/var/vcap/data/x y/store.json"},
     "container_metadata_file must be an absolute path of letters, digits and . _ / -"),
    ("dynamic-asgs-netmon", {"iptables_lock_file": "lock;reboot"}, "iptables_lock_file must be an absolute path"),
    ("dynamic-asgs-cni", {"main_plugins": "bridge"}, "main_plugins must be a list of plugin configurations"),
    ("dynamic-asgs-cni", {"underlay_interface_names": []}, "underlay_interface_names must list at least one"),
    ("dynamic-asgs-cni", {"plugin_directories": ["$(reboot)"]}, "plugin_directories must be an absolute path"),
])
def test_bad_properties_fail_the_render_with_a_clear_message(job: str, properties: dict[str, Any],
                                                             message: str) -> None:
    props = {**REQUIRED[job], **properties} if "ca_cert" not in message else properties
    with pytest.raises(RenderError) as info:
        render_job(JOBS / job, props, links=links_for(job))
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


def test_the_agent_reports_as_its_bosh_instance_unless_fleet_reports_are_off(tmp_path: Path) -> None:
    spec = {"name": "diego-cell", "index": 3, "id": "0c4e7a1b-2d3f-4e5a-8b9c-0d1e2f3a4b5c"}
    agent = check_loads("dynamic-asgs-agent", render_job(JOBS / "dynamic-asgs-agent", REQUIRED["dynamic-asgs-agent"],
                                                         spec=spec), tmp_path)
    assert (agent.cell_id, agent.cell_name) == ("0c4e7a1b-2d3f-4e5a-8b9c-0d1e2f3a4b5c", "diego-cell/3")
    assert (agent.report_interval, agent.denied_check_interval, agent.denied_window) == (60, 30, 600)
    off = check_loads("dynamic-asgs-agent", render_job(
        JOBS / "dynamic-asgs-agent", {**REQUIRED["dynamic-asgs-agent"], "fleet_reports": {"enabled": False,
                                                                                        "interval_seconds": 20},
                                      "denied_egress": {"check_interval_seconds": 0, "window_seconds": 120}},
        spec=spec), tmp_path / "off")
    assert (off.cell_id, off.report_interval, off.denied_check_interval, off.denied_window) == ("", 20, 0, 120)
