"""What the release tests share: the release's jobs, manifest and ops-files, rendered as the director would.

- `interpolate` stands in for the config server: every `((var))` of the manifest becomes a value
  (certificates and keys become recognisable fake PEM text, other vars a string or a number), so the
  manifest's properties can be rendered; `VARS` holds the non-generated vars an operator passes.
- `render_group_job` renders one job of an instance group of an interpolated manifest, with the
  links the director would wire (dynamic-asgs-db from the api group's policy server,
  dynamic-asgs-agent from the cell's agent, cni_config from the cell's CNI job); `config_loaders`
  maps each JSON config a job renders to the daemon's own loader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bosh_tools.render import Rendered, link_from_job, render_job

from dynamic_asgs.agent.settings import load_settings as load_agent_settings
from dynamic_asgs.config import load_config, load_schema, validate_config
from dynamic_asgs.policy_server.settings import load_settings as load_policy_settings
from dynamic_asgs.syncer.settings import load_settings as load_syncer_settings

__all__ = [
    "GROUPS", "JOBS", "LINKS", "MANIFEST", "OPS_FILES", "RELEASE", "VARS", "cni_plugin_config", "config_loaders",
    "interpolate", "job_properties", "links_for", "render_group_job",
]

RELEASE = Path(__file__).resolve().parents[2]
JOBS = RELEASE / "jobs"
MANIFEST = RELEASE / "manifests" / "dynamic-asgs.yml"
OPS_FILES = sorted((RELEASE / "ops-files").glob("*.yml"))
VAR = re.compile(r"\(\(([^()]+)\)\)")

#: Vars an operator passes (-v) or a config server holds; certificates are `variables:` of the manifest.
VARS: dict[str, Any] = {
    "uaa_clients_network_policy_secret": "uaa-secret", "uaa_hostname": "uaa.service.cf.internal",
    "cc_hostname": "cloud-controller-ng.service.cf.internal",
    "asg_syncer_poll_interval_seconds": 7, "agent_asg_poll_interval_seconds": 11, "agent_asg_blocking_wait_seconds": 13,
    "policy_server_database_host": "db.example.internal", "policy_server_database_username": "policy",
    "policy_server_database_password": "db-secret", "policy_server_database_name": "policy_db",
    "policy_server_database_ca_cert": "-----BEGIN CERTIFICATE-----\nDBCA\n-----END CERTIFICATE-----",
    "deny_networks_always": ["169.254.0.0/16", "fd00::/8"], "deny_networks_running": ["10.0.0.0/8"],
    "deny_networks_staging": [], "outbound_connections_burst": 500, "outbound_connections_rate_per_sec": 50,
    "api_instances": 2, "dynamic_asgs_log_level": "debug",
}


def fake_credential(name: str) -> str:
    """A config server's answer for `((name.field))` of a certificate variable."""
    var, _, field = name.partition(".")
    kind = "PRIVATE KEY" if field == "private_key" else "CERTIFICATE"
    return f"-----BEGIN {kind}-----\n{var}.{field}\n-----END {kind}-----"


def interpolate(doc: Any, extra: dict[str, Any] | None = None) -> Any:
    """``doc`` with every ((var)) replaced; an unknown var raises KeyError naming it."""
    generated = {v["name"] for v in doc.get("variables", [])} if isinstance(doc, dict) else set()
    values = {**VARS, **(extra or {})}

    def value(name: str) -> Any:
        if name.split(".")[0] in generated:
            return fake_credential(name)
        if name not in values:
            raise KeyError(f"(({name})) is neither a manifest variable nor an operator var in VARS")
        return values[name]

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            whole = VAR.fullmatch(node)
            if whole:
                return value(whole.group(1))
            return VAR.sub(lambda m: str(value(m.group(1))), node)
        return node

    return walk(doc)


def job_properties(manifest: dict[str, Any], group: str, job: str) -> dict[str, Any]:
    """The properties of ``job`` in instance group ``group``."""
    [ig] = [g for g in manifest["instance_groups"] if g["name"] == group]
    [entry] = [j for j in ig["jobs"] if j["name"] == job]
    return dict(entry.get("properties") or {})


#: Each job of the release and the instance group the example manifest runs it in.
GROUPS = {"dynamic-asgs-policy-server": "api", "dynamic-asgs-asg-syncer": "api", "dynamic-asgs-agent": "diego-cell",
          "dynamic-asgs-netmon": "diego-cell", "dynamic-asgs-cni": "diego-cell"}
#: consumer job -> {link name: (provider job, link name at the provider)}, as the standalone manifest wires them.
LINKS = {"dynamic-asgs-asg-syncer": {"dynamic-asgs-db": ("dynamic-asgs-policy-server", "dynamic-asgs-db")},
         "dynamic-asgs-cni": {"dynamic-asgs-agent": ("dynamic-asgs-agent", "dynamic-asgs-agent")},
         "dynamic-asgs-agent": {"cni_config": ("dynamic-asgs-cni", "cni_config")}}


def links_for(job: str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The links the director gives ``job`` (from the manifest's providers, or their spec defaults)."""
    links = {}
    for name, (provider, provided) in LINKS.get(job, {}).items():
        props = job_properties(manifest, GROUPS[provider], provider) if manifest is not None else {}
        links[name] = link_from_job(JOBS / provider, provided, props, group=GROUPS[provider])
    return links


def render_group_job(manifest: dict[str, Any], group: str, job: str) -> dict[str, Rendered]:
    """Every template of ``job`` rendered with its properties in the (interpolated) ``manifest``."""
    return render_job(JOBS / job, job_properties(manifest, group, job), links=links_for(job, manifest))


def cni_plugin_config(conflist: dict[str, Any]) -> dict[str, Any]:
    """The dynamic-asgs-cni entry of a conflist as the runtime hands it to the plugin (name, cniVersion added)."""
    [plugin] = [p for p in conflist["plugins"] if p.get("type") == "dynamic-asgs-cni"]
    return {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}


def _load_cni(path: Path) -> Any:
    """The plugin's own loader on its entry of the conflist; the result as a dict (keys of the config)."""
    from dynamic_asgs.cni.settings import load_settings as load_cni_settings

    conflist = json.loads(path.read_text())
    plugin = cni_plugin_config(conflist)
    load_cni_settings(plugin)
    return validate_config(plugin, load_schema("dynamic_asgs.cni", "config_schema.json"), source=str(path))


def _load_netmon(path: Path) -> Any:
    return load_config(path, load_schema("dynamic_asgs.netmon", "config_schema.json"))


#: job -> (rendered config destination, the daemon's own loader)
config_loaders: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "dynamic-asgs-policy-server": ("config/policy-server.json", load_policy_settings),
    "dynamic-asgs-asg-syncer": ("config/policy-server-asg-syncer.json", load_syncer_settings),
    "dynamic-asgs-agent": ("config/vxlan-policy-agent.json", load_agent_settings),
    "dynamic-asgs-netmon": ("config/netmon.json", _load_netmon),
    "dynamic-asgs-cni": ("config/cni/dynamic-asgs.conflist", _load_cni),
}
