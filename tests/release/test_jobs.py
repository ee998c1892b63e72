"""The release's jobs render as the director renders them, and what they render is what the daemons accept.

For every job: spec defaults (plus the few properties without a default) and the example
manifest's properties, alone and with each ops-file, render through the Ruby harness; each JSON
config is loaded by the daemon's own loader; every property a template reads is declared in the
spec; `monit -t` accepts every monit file; `disable: true` renders an empty monit file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from release_helpers import (
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

from support.bosh_render import Rendered, RenderError, load_job_spec, render, render_job, undeclared_properties
from support.env import require_tools
from support.gopatch import apply_ops_files
from support.monit import syntax_error
from support.release_layout import check_jobs

PEM = "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----"
KEY = "-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----"
#: The properties without a default, per job: the least a manifest must give.
REQUIRED: dict[str, dict[str, Any]] = {
    "policy-server": {"ca_cert": PEM, "server_cert": PEM, "server_key": KEY},
    "policy-server-asg-syncer": {"uaa_client_secret": "secret"},
    "vxlan-policy-agent": {"ca_cert": PEM, "client_cert": PEM, "client_key": KEY},
    "netmon": {},
    "dynamic-asgs-cni": {},
}
GROUPS = {"policy-server": "api", "policy-server-asg-syncer": "api", "vxlan-policy-agent": "diego-cell",
          "netmon": "diego-cell", "dynamic-asgs-cni": "diego-cell"}
DAEMONS = ("policy-server", "policy-server-asg-syncer", "vxlan-policy-agent", "netmon")


@pytest.fixture(autouse=True)
def _ruby() -> None:
    require_tools("ruby")


def test_the_release_has_the_five_jobs_and_each_is_well_formed() -> None:
    assert sorted(p.name for p in JOBS.iterdir()) == sorted(GROUPS)
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


@pytest.mark.parametrize("job", sorted(GROUPS))
def test_spec_defaults_render_and_the_daemon_accepts_them(job: str, tmp_path: Path) -> None:
    files = render_job(JOBS / job, REQUIRED[job], links=links_for(job))
    check_declared(job, files)
    assert check_loads(job, files, tmp_path)
    assert syntax_error(files["monit"].text) is None
    if job in DAEMONS:
        assert f"check process {job}\n" in files["monit"].text
        assert f"/var/vcap/sys/run/{job}/{job}.pid" in files["monit"].text
        ctl = files["bin/ctl"].text
        assert "PIDFILE=${RUN_DIR}/${JOB}.pid" in ctl and "RUN_DIR=/var/vcap/sys/run/${JOB}" in ctl
        assert "LOG_DIR=/var/vcap/sys/log/${JOB}" in ctl and f"JOB={job}\n" in ctl
    else:
        assert files["monit"].text.strip() == "", "the CNI job has no process"


def test_defaults_are_design_section_3_8s(tmp_path: Path) -> None:
    syncer = check_loads("policy-server-asg-syncer", render_job(
        JOBS / "policy-server-asg-syncer", REQUIRED["policy-server-asg-syncer"],
        links=links_for("policy-server-asg-syncer")), tmp_path)
    assert (syncer.poll_interval, syncer.retry_deadline, syncer.uaa_client) == (60, 300, "network-policy")
    assert syncer.uaa_url == "https://uaa.service.cf.internal:8443" and syncer.skip_ssl_validation is False
    assert syncer.cc_internal_url == "https://cloud-controller-ng.service.cf.internal:9023"
    assert syncer.database.type == "sqlite" and syncer.database.timeout == 120
    agent = check_loads("vxlan-policy-agent", render_job(JOBS / "vxlan-policy-agent", REQUIRED["vxlan-policy-agent"]),
                        tmp_path)
    assert (agent.enable_asg_syncing, agent.poll_interval, agent.force_port, agent.debug_port) == (True, 60, 8722, 8721)
    assert agent.policy_server_url == "https://policy-server.service.cf.internal:4003"
    server = check_loads("policy-server", render_job(JOBS / "policy-server", REQUIRED["policy-server"]), tmp_path)
    assert (server.port, server.health_port, server.database.timeout) == (4003, 31946, 120)
    assert server.database.database_name == "/var/vcap/store/policy-server/policy_server.db"
    assert server.database.database_name == syncer.database.database_name, "SQLite: the syncer shares the file"
    netmon = check_loads("netmon", render_job(JOBS / "netmon", {}), tmp_path)
    assert (netmon["poll_interval"], netmon["interface_name"]) == (30, "silk-vtep")


@pytest.mark.parametrize("ops", [None, *OPS_FILES], ids=lambda p: p.name if p else "manifest")
def test_manifest_with_each_ops_file_renders_and_loads(ops: Path | None, tmp_path: Path) -> None:
    manifest = interpolate(apply_ops_files(MANIFEST, *([ops] if ops else [])))
    loaded = {}
    for job, group in GROUPS.items():
        files = render_group_job(manifest, group, job)
        check_declared(job, files)
        loaded[job] = check_loads(job, files, tmp_path)
        assert syntax_error(files["monit"].text) is None, f"{job}: monit -t refuses its monit file"
    agent, cni = loaded["vxlan-policy-agent"], loaded["dynamic-asgs-cni"]
    assert cni["policy_agent_force_poll_address"] == f"127.0.0.1:{agent.force_port}"
    assert cni["iptables_asg_logging"] == agent.chains.asg_logging
    assert loaded["policy-server-asg-syncer"].database == loaded["policy-server"].database


def test_ops_files_change_what_the_daemons_load(tmp_path: Path) -> None:
    def load(*ops: str) -> dict[str, Any]:
        manifest = interpolate(apply_ops_files(MANIFEST, *(RELEASE / "ops-files" / o for o in ops)))
        return {job: check_loads(job, render_group_job(manifest, group, job), tmp_path / "-".join(ops))
                for job, group in GROUPS.items()}

    base = load()
    assert base["vxlan-policy-agent"].enable_asg_syncing is True
    off = load("disable-dynamic-asgs.yml")
    assert off["vxlan-policy-agent"].enable_asg_syncing is False
    polls = load("set-asg-poll-intervals.yml")
    assert (polls["policy-server-asg-syncer"].poll_interval, polls["vxlan-policy-agent"].poll_interval) == (7, 11)
    assert load("set-asg-blocking-wait.yml")["vxlan-policy-agent"].blocking_wait == 13
    pg = load("use-postgres.yml", "use-database-tls.yml")
    for job in ("policy-server", "policy-server-asg-syncer"):
        db = pg[job].database
        assert (db.type, db.host, db.port, db.user, db.password) == ("postgres", "db.example.internal", 5432,
                                                                     "policy", "db-secret")
        assert db.require_ssl and db.ca_cert == f"/var/vcap/jobs/{job}/config/certs/database_ca.crt"
    assert load("use-mysql.yml")["policy-server"].database.port == 3306
    logging = load("enable-asg-logging.yml")
    assert logging["vxlan-policy-agent"].chains.asg_logging and logging["dynamic-asgs-cni"]["iptables_asg_logging"]
    deny = load("set-deny-networks.yml")["vxlan-policy-agent"].chains.deny_networks
    assert [str(n) for n in deny.always] == ["169.254.0.0/16", "fd00::/8"]
    assert [str(n) for n in deny.running] == ["10.0.0.0/8"]
    v6 = load("enable-ipv6.yml")
    assert v6["vxlan-policy-agent"].enable_ipv6 and v6["netmon"]["enable_ipv6"]
    nft = load("use-nft-iptables.yml")
    assert nft["vxlan-policy-agent"].commands[4] == ("iptables-nft-restore", "iptables-nft-save")
    assert nft["dynamic-asgs-cni"]["iptables_restore_command"] == "iptables-nft-restore"


def test_disable_renders_an_empty_monit_file() -> None:
    manifest = interpolate(apply_ops_files(MANIFEST, RELEASE / "ops-files" / "disable-dynamic-asgs.yml"))
    syncer = job_properties(manifest, "api", "policy-server-asg-syncer")
    assert render(JOBS / "policy-server-asg-syncer", "monit", syncer, links=links_for(
        "policy-server-asg-syncer", manifest)).strip() == ""
    for job in DAEMONS:
        text = render(JOBS / job, "monit", {**REQUIRED[job], "disable": True}, links=links_for(job))
        assert text.strip() == "" and syntax_error(text) is None


def test_health_checks_use_the_configured_ports() -> None:
    server = render(JOBS / "policy-server", "monit", {**REQUIRED["policy-server"], "health_check_port": 4242})
    assert 'port 4242 protocol http request "/health"' in server
    agent = render(JOBS / "vxlan-policy-agent", "monit", {**REQUIRED["vxlan-policy-agent"], "debug_server_port": 4343})
    assert 'port 4343 protocol http request "/log-level"' in agent


def test_daemons_run_as_vcap_except_the_agent_and_netmon() -> None:
    for job in DAEMONS:
        ctl = render_job(JOBS / job, REQUIRED[job], links=links_for(job))["bin/ctl"].text
        user = "root" if job in ("vxlan-policy-agent", "netmon") else "vcap"
        assert f"RUN_USER={user}\n" in ctl
        assert ("setpriv --reuid=" in ctl) == (user == "vcap")


def test_secrets_are_made_0600_by_ctl() -> None:
    secrets = {"policy-server": ["config/certs/server.key", "config/policy-server.json"],
               "policy-server-asg-syncer": ["config/certs/cc_internal_client.key",
                                            "config/policy-server-asg-syncer.json"],
               "vxlan-policy-agent": ["config/certs/client.key", "config/certs/loggregator_client.key"]}
    for job, files in secrets.items():
        ctl = render_job(JOBS / job, REQUIRED[job], links=links_for(job))["bin/ctl"].text
        line = next(x for x in ctl.splitlines() if x.startswith("SECRETS=("))
        assert line == "SECRETS=(" + " ".join(f'"${{JOB_DIR}}/{f}"' for f in files) + ")"
        assert 'chmod 0600 "${secret}"' in ctl


def test_the_policy_server_migrates_in_pre_start_and_provides_dbconn() -> None:
    files = render_job(JOBS / "policy-server", REQUIRED["policy-server"])
    assert "policy-server --migrate-only" in files["bin/pre-start"].text
    provided = {p["name"]: p for p in load_job_spec(JOBS / "policy-server")["provides"]}
    assert provided["dbconn"]["type"] == "dbconn"
    consumed = {c["name"]: c for c in load_job_spec(JOBS / "policy-server-asg-syncer")["consumes"]}
    assert consumed["dbconn"]["type"] == "dbconn"
    vpa = {p["name"]: p for p in load_job_spec(JOBS / "vxlan-policy-agent")["provides"]}["vpa"]
    assert "force_policy_poll_cycle_port" in vpa["properties"]


def test_cni_job_installs_the_plugin_and_a_conflist() -> None:
    files = render_job(JOBS / "dynamic-asgs-cni", {"plugin_directories": ["/var/vcap/packages/silk-cni/bin"]},
                       links=links_for("dynamic-asgs-cni"))
    assert "exec /var/vcap/packages/dynamic-asgs/bin/dynamic-asgs-cni \"$@\"" in files["bin/dynamic-asgs-cni"].text
    assert ("ln -sfn /var/vcap/jobs/dynamic-asgs-cni/bin/dynamic-asgs-cni "
            "/var/vcap/packages/silk-cni/bin/dynamic-asgs-cni") in files["bin/pre-start"].text
    conflist = json.loads(files["config/cni/dynamic-asgs.conflist"].text)
    assert conflist["cniVersion"] == "1.0.0"
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "dynamic-asgs-cni"], "chained after the main plugin"


@pytest.mark.parametrize(("job", "properties", "message"), [
    ("policy-server", {"database": {"type": "oracle"}},
     "database.type must be sqlite, postgres or mysql, not 'oracle'"),
    ("policy-server", {"database": {"type": "postgres"}}, "database.host is required for database.type postgres"),
    ("policy-server", {}, "Can't find property 'ca_cert'"),
    ("policy-server-asg-syncer", {"cc_internal": {"client_cert": PEM}},
     "cc_internal.client_cert and cc_internal.client_key must be set together"),
    ("vxlan-policy-agent", {"loggregator": {"use_v2_api": True}},
     "loggregator.ca_cert is required when loggregator.use_v2_api is true"),
    ("dynamic-asgs-cni", {"main_plugins": "bridge"}, "main_plugins must be a list of plugin configurations"),
    ("dynamic-asgs-cni", {"underlay_interface_names": []}, "underlay_interface_names must list at least one"),
])
def test_bad_properties_fail_the_render_with_a_clear_message(job: str, properties: dict[str, Any],
                                                             message: str) -> None:
    props = {**REQUIRED[job], **properties} if "ca_cert" not in message else properties
    with pytest.raises(RenderError) as info:
        render_job(JOBS / job, props, links=links_for(job))
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)
