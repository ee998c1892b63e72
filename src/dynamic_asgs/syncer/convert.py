"""Cloud Controller resources -> policy DB rows, refusing listings with structural faults.

Decision (DESIGN.md §3.2, §4): the syncer stores each group's ``rules`` exactly as CC gave
them (re-serialised JSON, keys and values untouched), so every cell sees CC's data and
decides for itself; the agents drop an invalid rule and keep the group's other rules. A
*structural* fault (a resource without a guid, a relationship entry without a guid,
``rules`` that is not a list, a guid listed twice) makes the whole listing unusable:
:func:`rows_from_resources` raises :class:`~dynamic_asgs.errors.ValidationError` and the
stored data stays as it was, so the DB never holds a mix of old and partial new data.
Invalid rules are counted and reported (logs and a metric) but do not stop the sync.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynamic_asgs.asg.parse import parse_cc_group
from dynamic_asgs.errors import RuleError, ValidationError
from dynamic_asgs.policy.store import GroupRow

__all__ = ["Converted", "rows_from_resources"]


@dataclass(frozen=True, slots=True)
class Converted:
    """The rows to store and the rules the cells will drop (with their reasons)."""

    rows: list[GroupRow]
    invalid_rules: list[RuleError]


def rows_from_resources(resources: Sequence[Any]) -> Converted:
    """Validate CC ``/v3/security_groups`` resources and turn them into rows."""
    rows: list[GroupRow] = []
    invalid: list[RuleError] = []
    seen: set[str] = set()
    for index, resource in enumerate(resources):
        try:
            group = parse_cc_group(resource)
        except ValidationError as exc:
            raise ValidationError(f"cloud controller listing: resources[{index}]: {exc}") from exc
        if group.guid in seen:
            raise ValidationError(f"cloud controller listing: security group {group.guid} appears twice")
        seen.add(group.guid)
        invalid.extend(group.invalid_rules)
        rows.append(
            GroupRow(
                guid=group.guid,
                name=group.name,
                rules=json.dumps(resource.get("rules") or [], separators=(",", ":"), ensure_ascii=False),
                staging_default=group.staging_default,
                running_default=group.running_default,
                staging_spaces=tuple(sorted(set(group.staging_spaces))),
                running_spaces=tuple(sorted(set(group.running_spaces))),
            )
        )
    return Converted(rows, invalid)
