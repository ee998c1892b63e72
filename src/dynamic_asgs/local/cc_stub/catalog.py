"""The CC stand-in's data: security groups loaded from a YAML/JSON file, served as CC v3 resources.

Accepted file forms (YAML or JSON):

* the human-friendly form (``local/examples/asgs.yml``)::

      security_groups:
        - name: public-dns                      # guid optional: derived from the name
          globally_enabled: {running: true, staging: true}
          rules: [{protocol: udp, destination: "8.8.8.8", ports: "53"}]
          running_spaces: [space-guid-1]        # space guids
          staging_spaces: []

* a CC ``/v3/security_groups`` listing (``resources``), e.g. saved from
  ``cf curl /v3/security_groups``, or a bare list of either kind of entry.

Rules are passed through untouched (the stand-in serves invalid rules if the file has
them, so the agents' fail-closed handling can be exercised); the structure (names, guids,
lists) is checked and a bad file is refused with the entry's index. ``created_at`` and
``updated_at`` default to the file's modification time. Each resource is serialised once
at load, so a 50,000-group listing pages quickly.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dynamic_asgs.errors import InputError

__all__ = ["Catalog", "GroupEntry", "load_catalog", "rfc3339"]

_GUID_NAMESPACE = uuid.UUID("5b3f1f0e-8f3c-4a4e-9d2b-6b1d5d0d2a51")


def rfc3339(ns: int) -> str:
    """Epoch nanoseconds as CC writes times: RFC 3339, UTC, nanoseconds."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """One group: its filter keys and its serialised CC v3 resource."""

    guid: str
    name: str
    running: bool
    staging: bool
    running_spaces: frozenset[str]
    staging_spaces: frozenset[str]
    resource: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Catalog:
    """All groups in CC's default order."""

    groups: tuple[GroupEntry, ...]


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{where}: must be a list of space guids")
    return value


def _spaces(entry: Mapping[str, Any], key: str, where: str) -> list[str]:
    if key in entry:
        return _strings(entry[key], f"{where}: {key}")
    rel = (entry.get("relationships") or {}).get(key)
    if rel is None:
        return []
    data = rel.get("data") if isinstance(rel, Mapping) else None
    if not isinstance(data, list) or not all(isinstance(d, Mapping) and isinstance(d.get("guid"), str)
                                             for d in data):
        raise InputError(f"{where}: relationships.{key}.data: must be a list of {{guid: ...}}")
    return [d["guid"] for d in data]


def _entry(raw: Any, index: int, base_url: str, stamp: str) -> GroupEntry:
    where = f"security_groups[{index}]"
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: name: must be a non-empty string")
    guid = raw.get("guid") or str(uuid.uuid5(_GUID_NAMESPACE, name))
    if not isinstance(guid, str):
        raise InputError(f"{where}: guid: must be a string")
    enabled = raw.get("globally_enabled") or {}
    if not isinstance(enabled, Mapping) or not all(isinstance(v, bool) for v in enabled.values()):
        raise InputError(f"{where}: globally_enabled: must be {{running: bool, staging: bool}}")
    rules = raw.get("rules") or []
    if not isinstance(rules, list):
        raise InputError(f"{where}: rules: must be a list")
    running, staging = _spaces(raw, "running_spaces", where), _spaces(raw, "staging_spaces", where)
    resource = {
        "guid": guid, "created_at": raw.get("created_at", stamp), "updated_at": raw.get("updated_at", stamp),
        "name": name,
        "globally_enabled": {"running": bool(enabled.get("running")), "staging": bool(enabled.get("staging"))},
        "rules": rules,
        "relationships": {
            "staging_spaces": {"data": [{"guid": g} for g in staging]},
            "running_spaces": {"data": [{"guid": g} for g in running]},
        },
        "links": {"self": {"href": f"{base_url}/v3/security_groups/{guid}"}},
    }
    return GroupEntry(guid, name, bool(enabled.get("running")), bool(enabled.get("staging")),
                      frozenset(running), frozenset(staging),
                      json.dumps(resource, separators=(",", ":"), default=str).encode())


def _items(doc: Any) -> Sequence[Any]:
    if isinstance(doc, Mapping):
        for key in ("security_groups", "resources"):
            if key in doc:
                items = doc[key]
                break
        else:
            raise InputError("expected a 'security_groups' or 'resources' list")
    else:
        items = doc
    if items is None:
        return []
    if not isinstance(items, list):
        raise InputError("the security groups must be a list")
    return items


def load_catalog(path: str | Path, *, base_url: str) -> Catalog:
    """Read ``path`` (JSON or YAML) into a :class:`Catalog`; raise InputError naming the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=getattr(yaml, "CSafeLoader",
                                                                                         yaml.SafeLoader))
    except (ValueError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    stamp = rfc3339(path.stat().st_mtime_ns)
    try:
        groups = tuple(_entry(raw, i, base_url, stamp) for i, raw in enumerate(_items(doc)))
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    seen: set[str] = set()
    for group in groups:
        if group.guid in seen:
            raise InputError(f"{path}: security group guid {group.guid} appears twice")
        seen.add(group.guid)
    return Catalog(groups)
