"""Cloud Controller resources -> policy DB rows: a group that cannot be stored is dropped alone.

Decisions (DESIGN.md §3.2, §4; issue 13):

* The syncer stores each group's ``rules`` exactly as CC gave them (re-serialised JSON, keys
  and values untouched), so every cell sees CC's data and decides for itself; the agents
  drop an invalid rule and keep the group's other rules. Invalid rules are counted and
  reported (logs and a metric) but do not stop the sync.
* A group that cannot be stored faithfully is **dropped alone**, named in
  :attr:`Converted.dropped`, and the rest of the listing is stored. That is: a resource
  that is not an object or lacks one of CC's keys (``guid``, ``name``, ``rules``,
  ``globally_enabled``, ``relationships``); wrong types
  (:func:`~dynamic_asgs.asg.parse.parse_cc_group`); a guid or space guid outside the
  grammar the policy server accepts in queries; a name longer than 255 characters (the
  column, and CC's own limit) or holding control characters; text not encodable as UTF-8
  (a lone surrogate such as JSON ``"\\ud800"``, which every database refuses); anything
  nested too deeply to check or serialise. Before, one such group failed every sync.
  Dropping fails closed: the group's grants leave the cells, nothing else changes.
* A guid listed twice still refuses the whole listing
  (:class:`~dynamic_asgs.errors.ValidationError`): that is a torn listing, not a bad
  group, and the stored data stays as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynamic_asgs.asg.model import SecurityGroup
from dynamic_asgs.asg.parse import parse_cc_group
from dynamic_asgs.errors import RuleError, ValidationError
from dynamic_asgs.policydb.store import GroupRow

__all__ = ["MAX_NAME", "Converted", "rows_from_resources"]

#: Longest group name stored (the ``name`` column; CC allows no longer).
MAX_NAME = 255
_REQUIRED = ("guid", "name", "rules", "globally_enabled", "relationships")
#: Guids as the policy server accepts them in ``space_guids`` (a group or space outside it could never be asked for).
_GUID = re.compile(r"[A-Za-z0-9._:~-]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class Converted:
    """The rows to store, the rules the cells will drop and the groups dropped here (with their reasons)."""

    rows: list[GroupRow]
    invalid_rules: list[RuleError]
    dropped: list[str] = field(default_factory=list)


def rows_from_resources(resources: Sequence[Any]) -> Converted:
    """Validate CC ``/v3/security_groups`` resources and turn the storable ones into rows."""
    rows: list[GroupRow] = []
    invalid: list[RuleError] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for index, resource in enumerate(resources):
        try:
            group, rules = _checked(resource)
        except ValidationError as exc:
            dropped.append(f"resources[{index}]: {exc}"[:_REASON_CHARS])
            continue
        if group.guid in seen:
            raise ValidationError(f"cloud controller listing: security group {group.guid} appears twice")
        seen.add(group.guid)
        invalid.extend(group.invalid_rules)
        rows.append(
            GroupRow(
                guid=group.guid,
                name=group.name,
                rules=rules,
                staging_default=group.staging_default,
                running_default=group.running_default,
                staging_spaces=tuple(sorted(set(group.staging_spaces))),
                running_spaces=tuple(sorted(set(group.running_spaces))),
            )
        )
    return Converted(rows, invalid, dropped)


def _checked(resource: Any) -> tuple[SecurityGroup, str]:
    """The parsed group and its rules as stored text; ValidationError if it cannot be stored."""
    if isinstance(resource, Mapping):
        missing = [key for key in _REQUIRED if key not in resource]
        if missing:
            raise ValidationError(f"security group: lacks {', '.join(missing)}")
    try:
        group = parse_cc_group(resource)
        rules = json.dumps(resource.get("rules") or [], separators=(",", ":"), ensure_ascii=False)
    except RecursionError:
        raise ValidationError("security group: nested too deeply to check") from None
    where = f"security group {group.guid[:80]!r}"
    if not _GUID.fullmatch(group.guid):
        raise ValidationError(f"{where}: guid: not a valid guid")
    for space in (*group.running_spaces, *group.staging_spaces):
        if not _GUID.fullmatch(space):
            raise ValidationError(f"{where}: space guid {space[:80]!r}: not a valid guid")
    if len(group.name) > MAX_NAME:
        raise ValidationError(f"{where}: name: {len(group.name)} characters; at most {MAX_NAME} are stored")
    if _CONTROL.search(group.name):
        raise ValidationError(f"{where}: name: holds control characters")
    for what, text in (("name", group.name), ("rules", rules)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError(f"{where}: {what}: not encodable as UTF-8 ({exc.reason})") from None
    return group, rules
