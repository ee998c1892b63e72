"""The example manifest and the ops-files: every ops-file applies (go-patch), and the result is deployable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bosh_tools.gopatch import OpsError, apply_ops, apply_ops_files, load_yaml
from bosh_tools.render import load_job_spec
from release_helpers import JOBS, MANIFEST, OPS_FILES, RELEASE, VAR, VARS, interpolate, job_properties

EXPECTED_OPS = {"disable-dynamic-asgs.yml", "set-asg-poll-intervals.yml", "use-postgres.yml", "use-mysql.yml",
                "enable-asg-logging.yml", "set-asg-blocking-wait.yml", "enable-ipv6.yml"}


def variables_used(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(variables_used(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(variables_used(v) for v in node)) if node else set()
    return {m.group(1) for m in VAR.finditer(node)} if isinstance(node, str) else set()


def declared(spec_props: dict[str, Any], props: dict[str, Any], prefix: str = "") -> list[str]:
    """Manifest property paths the job's spec does not declare (the director would drop them silently)."""
    missing = []
    for key, value in props.items():
        name = f"{prefix}{key}"
        if name in spec_props:
            continue
        if isinstance(value, dict) and any(p.startswith(f"{name}.") for p in spec_props):
            missing.extend(declared(spec_props, value, f"{name}."))
        else:
            missing.append(name)
    return missing


def test_the_operators_ops_files_are_there() -> None:
    assert {p.name for p in OPS_FILES} >= EXPECTED_OPS


@pytest.mark.parametrize("ops", [None, *OPS_FILES], ids=lambda p: p.name if p else "manifest")
def test_each_ops_file_applies_and_the_result_is_deployable(ops: Path | None) -> None:
    manifest = apply_ops_files(MANIFEST, *([ops] if ops else []))
    assert manifest["name"] == "dynamic-asgs"
    assert [r["name"] for r in manifest["releases"]] == ["dynamic-asgs"]
    groups = {g["name"]: [j["name"] for j in g["jobs"]] for g in manifest["instance_groups"]}
    assert groups == {"api": ["dynamic-asgs-policy-server", "dynamic-asgs-asg-syncer"],
                      "diego-cell": ["dynamic-asgs-agent", "dynamic-asgs-netmon", "dynamic-asgs-cni"]}
    for group in manifest["instance_groups"]:
        assert group["stemcell"] in {s["alias"] for s in manifest["stemcells"]}
        for job in group["jobs"]:
            spec = load_job_spec(JOBS / job["name"])
            undeclared = declared(spec.get("properties") or {}, job.get("properties") or {})
            assert undeclared == [], f"{group['name']}/{job['name']}: undeclared properties {undeclared}"
    generated = {v["name"] for v in manifest["variables"]}
    for name in variables_used(manifest):
        base = name.split(".")[0]
        assert base in generated or name in VARS, f"(({name})) is neither generated nor an operator var"
        if "." in name:
            assert base in generated, f"(({name})): only generated variables have fields"
    interpolate(manifest)


def test_every_ca_and_certificate_is_a_variable() -> None:
    manifest = load_yaml(MANIFEST)
    variables = {v["name"]: v for v in manifest["variables"]}
    for name in variables_used(manifest):
        if name.endswith((".certificate", ".private_key", ".ca")):
            assert variables[name.split(".")[0]]["type"] == "certificate"
    for variable in variables.values():
        options = variable["options"]
        assert options.get("is_ca") or options["ca"] in variables, variable["name"]
    secrets = [n for n in variables_used(manifest) if "secret" in n or "password" in n]
    assert secrets == ["uaa_clients_network_policy_secret"]


def test_disable_dynamic_asgs_sets_the_two_values() -> None:
    before = load_yaml(MANIFEST)
    after = apply_ops_files(MANIFEST, RELEASE / "ops-files" / "disable-dynamic-asgs.yml")
    assert job_properties(after, "api", "dynamic-asgs-asg-syncer")["disable"] is True
    assert job_properties(after, "diego-cell", "dynamic-asgs-agent")["enable_asg_syncing"] is False
    ops = load_yaml(RELEASE / "ops-files" / "disable-dynamic-asgs.yml")
    assert [(o["type"], o["path"]) for o in ops] == [
        ("replace", "/instance_groups/name=api/jobs/name=dynamic-asgs-asg-syncer/properties/disable?"),
        ("replace", "/instance_groups/name=diego-cell/jobs/name=dynamic-asgs-agent/properties/enable_asg_syncing?"),
    ], "cf-deployment's two operations, on this release's jobs"
    assert "disable" not in job_properties(before, "api", "dynamic-asgs-asg-syncer")
    assert job_properties(before, "diego-cell", "dynamic-asgs-agent")["enable_asg_syncing"] is True


def test_ops_files_compose() -> None:
    names = ["use-postgres.yml", "use-database-tls.yml", "set-asg-poll-intervals.yml", "enable-asg-logging.yml",
             "scale-api.yml", "disable-dynamic-asgs.yml"]
    manifest = interpolate(apply_ops_files(MANIFEST, *(RELEASE / "ops-files" / n for n in names)))
    db = job_properties(manifest, "api", "dynamic-asgs-policy-server")["database"]
    assert (db["type"], db["port"], db["require_ssl"]) == ("postgres", 5432, True)
    assert [g["instances"] for g in manifest["instance_groups"]] == [2, 1]


def test_an_ops_file_with_a_wrong_path_is_refused() -> None:
    manifest = load_yaml(MANIFEST)
    with pytest.raises(OpsError, match="name=cell"):
        apply_ops(manifest, [{"type": "replace", "path": "/instance_groups/name=cell/jobs/0/properties/x?",
                              "value": 1}])
