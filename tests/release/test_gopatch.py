"""The go-patch implementation applies ops-files as the bosh CLI does (cases in cf-deployment's style)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bosh_tools.gopatch import AfterLast, Index, Key, Match, OpsError, apply_ops, apply_ops_files, parse_pointer

MANIFEST = yaml.safe_load("""
name: cf
releases:
- name: silk
  version: latest
instance_groups:
- name: api
  instances: 2
  jobs:
  - name: cloud_controller_ng
    release: capi
    properties:
      cc:
        security_group_definitions:
        - name: dns
          rules: [{destination: 0.0.0.0/0, ports: "53", protocol: udp}]
  - name: policy-server-asg-syncer
    release: cf-networking
    properties:
      uaa_client_secret: ((uaa_clients_network_policy_secret))
- name: scheduler
  instances: 2
  vm_extensions: [diego-ssh-proxy-network-properties]
  jobs:
  - name: ssh_proxy
    release: diego
- name: diego-cell
  instances: 3
  networks: [{name: default}]
  jobs:
  - name: rep
    release: diego
  - name: vxlan-policy-agent
    release: silk
    properties: {}
""")


def ops(text: str) -> list[object]:
    return yaml.safe_load(text)


def job(doc: dict, group: str, name: str) -> dict:
    ig = next(g for g in doc["instance_groups"] if g["name"] == group)
    return next(j for j in ig["jobs"] if j["name"] == name)


def test_disable_dynamic_asgs_sets_optional_properties() -> None:
    out = apply_ops(MANIFEST, ops("""
- type: replace
  path: /instance_groups/name=api/jobs/name=policy-server-asg-syncer/properties/disable?
  value: true
- type: replace
  path: /instance_groups/name=diego-cell/jobs/name=vxlan-policy-agent/properties/enable_asg_syncing?
  value: false
"""))
    assert job(out, "api", "policy-server-asg-syncer")["properties"] == {
        "uaa_client_secret": "((uaa_clients_network_policy_secret))", "disable": True}
    assert job(out, "diego-cell", "vxlan-policy-agent")["properties"] == {"enable_asg_syncing": False}
    assert "disable" not in job(MANIFEST, "api", "policy-server-asg-syncer")["properties"], "input left untouched"


def test_optional_key_creates_the_maps_to_its_right() -> None:
    out = apply_ops(MANIFEST, ops("""
- type: replace
  path: /instance_groups/name=diego-cell/jobs/name=rep/properties?/diego/rep/evacuation_timeout_in_seconds
  value: 0
"""))
    assert job(out, "diego-cell", "rep")["properties"] == {"diego": {"rep": {"evacuation_timeout_in_seconds": 0}}}


def test_append_remove_and_move_a_job_like_bosh_lite() -> None:
    out = apply_ops(MANIFEST, ops("""
- type: remove
  path: /instance_groups/name=scheduler/vm_extensions
- type: remove
  path: /instance_groups/name=scheduler/jobs/name=ssh_proxy
- type: replace
  path: /instance_groups/name=api/jobs/-
  value: {name: ssh_proxy, release: diego, properties: {enable_cf_auth: true}}
- type: replace
  path: /instance_groups/name=api/jobs/name=cloud_controller_ng/properties/cc/security_group_definitions/-
  value: {name: load_balancer, rules: [{destination: 10.244.0.34, protocol: all}]}
- type: replace
  path: /instance_groups/name=diego-cell/instances
  value: 1
"""))
    scheduler = out["instance_groups"][1]
    assert scheduler == {"name": "scheduler", "instances": 2, "jobs": []}
    assert [j["name"] for j in out["instance_groups"][0]["jobs"]] == [
        "cloud_controller_ng", "policy-server-asg-syncer", "ssh_proxy"]
    groups = job(out, "api", "cloud_controller_ng")["properties"]["cc"]["security_group_definitions"]
    assert [g["name"] for g in groups] == ["dns", "load_balancer"]
    assert out["instance_groups"][2]["instances"] == 1


def test_optional_selector_appends_a_new_item() -> None:
    out = apply_ops(MANIFEST, ops("""
- type: replace
  path: /releases/name=dynamic-asgs?
  value: {name: dynamic-asgs, version: ((dynamic_asgs_version))}
- type: replace
  path: /instance_groups/name=diego-cell/jobs/name=netmon?/properties/poll_interval
  value: 30
- type: replace
  path: /releases/name=silk?/version
  value: 1.2.3
"""))
    assert out["releases"] == [{"name": "silk", "version": "1.2.3"},
                               {"name": "dynamic-asgs", "version": "((dynamic_asgs_version))"}]
    assert job(out, "diego-cell", "netmon") == {"name": "netmon", "properties": {"poll_interval": 30}}


def test_optional_array_is_created_for_append() -> None:
    out = apply_ops(MANIFEST, ops("""
- type: replace
  path: /addons?/-
  value: {name: bpm, jobs: [{name: bpm, release: bpm}]}
- type: replace
  path: /variables?/name=policy_server_ca?
  value: {name: policy_server_ca, type: certificate, options: {is_ca: true}}
"""))
    assert out["addons"] == [{"name": "bpm", "jobs": [{"name": "bpm", "release": "bpm"}]}]
    assert out["variables"] == [{"name": "policy_server_ca", "type": "certificate", "options": {"is_ca": True}}]


def test_indexes_negative_and_modifiers() -> None:
    doc = {"array": [4, 5, 6], "items": [{"name": "a"}, {"name": "b"}]}
    out = apply_ops(doc, ops("""
- {type: replace, path: /array/0, value: 10}
- {type: replace, path: /array/-1, value: 60}
- {type: replace, path: /array/1:prev, value: 11}
- {type: replace, path: /array/0:before, value: 1}
- {type: replace, path: /items/name=a:after, value: {name: a2}}
- {type: replace, path: /items/name=a:next/name, value: a3}
- {type: remove, path: /array/-1}
"""))
    assert out == {"array": [1, 11, 5], "items": [{"name": "a"}, {"name": "a3"}, {"name": "b"}]}


def test_remove_of_missing_optional_path_is_a_no_op() -> None:
    out = apply_ops(MANIFEST, ops("""
- type: remove
  path: /instance_groups/name=diego-cell/jobs/name=garden?
- type: remove
  path: /instance_groups/name=api/jobs/name=cloud_controller_ng/properties/cc/nope?/deeper
"""))
    assert out == MANIFEST


def test_replace_root_and_escaped_keys() -> None:
    assert apply_ops({"a": 1}, ops("[{type: replace, path: '', value: {b: 2}}]")) == {"b": 2}
    out = apply_ops({"a/b": {"k=v": 1, "c:d": 2}}, ops("""
- {type: replace, path: /a~1b/k~3v, value: 3}
- {type: replace, path: /a~1b/c~7d, value: 4}
- {type: replace, path: "/a~1b/q~2?", value: 5}
"""))
    assert out == {"a/b": {"k=v": 3, "c:d": 4, "q?": 5}}


def test_each_replace_gets_its_own_copy_of_the_value() -> None:
    out = apply_ops({}, ops("""
- {type: replace, path: "/a?", value: &v {x: [1]}}
- {type: replace, path: "/b?", value: *v}
- {type: replace, path: /a/x/-, value: 2}
"""))
    assert out == {"a": {"x": [1, 2]}, "b": {"x": [1]}}


@pytest.mark.parametrize(("text", "message"), [
    ("[{type: replace, path: /instance_groups/name=nope/instances, value: 1}]",
     "expected to find exactly one matching array item for path '/instance_groups/name=nope' but found 0"),
    ("[{type: replace, path: /name2, value: 1}]", "expected to find a map key 'name2' for path '/name2'"),
    ("[{type: replace, path: /instance_groups/9/name, value: x}]",
     "expected to find array index 9 but found an array of length 3"),
    ("[{type: replace, path: /instance_groups/name=api/jobs/name=cloud_controller_ng/properties/cc/x/y, value: 1}]",
     "map key 'x'"),
    ("[{type: remove, path: /releases/name=cflinuxfs4}]", "found 0"),
    ("[{type: replace, path: /name/x, value: 1}]", "expected a map at path '/name/x' but found str"),
    ("[{type: replace, path: /name/-, value: 1}]", "expected an array at path '/name/-' but found str"),
    ("[{type: replace, path: /releases/-/name, value: 1}]", "expected a map at path '/releases/-' but found list"),
    ("[{type: replace, path: /name}]", "missing value"),
    ("[{type: remove, path: /name, value: 1}]", "cannot specify value"),
    ("[{type: remove, path: ''}]", "cannot remove entire document"),
    ("[{type: move, path: /name}]", "unknown operation type 'move'"),
    ("[{type: replace, value: 1}]", "missing path"),
    ("[{type: replace, path: name, value: 1}]", "expected to start with '/'"),
    ("[{type: replace, path: '/releases/0:sideways', value: 1}]", "unknown modifier 'sideways'"),
    ("[{type: replace, path: /releases/name=silk, value: 1}, {type: replace, path: /releases/name=silk/v, value: 1}]",
     "operation [1] (replace /releases/name=silk/v)"),
    ("[{type: replace, path: /nope, value: 1, error: use ops-files/x.yml first}]", "(use ops-files/x.yml first)"),
    ("{type: replace}", "an ops-file is a list of operations"),
])
def test_errors_name_the_operation_and_path(text: str, message: str) -> None:
    with pytest.raises(OpsError) as info:
        apply_ops(MANIFEST, ops(text))
    assert message in str(info.value)


def test_selector_matches_strings_only_and_must_be_unique() -> None:
    doc = {"ports": [{"port": 80}, {"port": "80"}], "dup": [{"name": "x"}, {"name": "x"}]}
    out = apply_ops(doc, ops("[{type: replace, path: '/ports/port=80/tls?', value: true}]"))
    assert out["ports"] == [{"port": 80}, {"port": "80", "tls": True}]
    with pytest.raises(OpsError, match="but found 2"):
        apply_ops(doc, ops("[{type: replace, path: '/dup/name=x/y?', value: 1}]"))


def test_pointer_optionality_carries_to_the_right() -> None:
    assert parse_pointer("/a/b?/c/name=d/0/-") == [
        Key("a", False), Key("b", True), Key("c", True), Match("name", "d", True), Index(0), AfterLast()]


def test_apply_ops_files_in_order_and_names_the_failing_file(tmp_path: Path) -> None:
    manifest, first, second = tmp_path / "m.yml", tmp_path / "1.yml", tmp_path / "2.yml"
    manifest.write_text(yaml.safe_dump(MANIFEST))
    first.write_text("- {type: replace, path: /name, value: cf2}\n")
    second.write_text("- {type: replace, path: /name, value: cf3}\n- {type: remove, path: /stemcells}\n")
    assert apply_ops_files(manifest, first)["name"] == "cf2"
    with pytest.raises(OpsError, match=r"2\.yml: operation \[1\] \(remove /stemcells\)"):
        apply_ops_files(manifest, first, second)
