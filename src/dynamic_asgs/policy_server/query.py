"""Parameters of ``/networking/v1/internal/security_groups``, validated (the Go server answered 500).

``GET`` takes ``space_guids`` (comma list; repeated parameters are merged), ``from``,
``limit`` and ``wait`` in the query string. ``POST`` takes a JSON body
``{"space_guids": [...], "from": N, "limit": N, "wait": S}`` (every key optional) for space
lists too long for a URL; query-string values are used for keys the body lacks. Empty
list elements are ignored (as the Go server did); anything else that is wrong raises
:class:`QueryError`, answered with 400 and ``{"error": "..."}`` naming the parameter.

Hostile values stay cheap and end in 400, never 500 (issue 13): integers are checked
for length before conversion (Python refuses more than 4,300 digits, and converting is
quadratic), JSON integers longer than 40 digits are never converted at all
(:class:`_LongNumber`), and a body nested deeper than the JSON decoder's recursion
bound is refused as such.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_SPACES", "MAX_WAIT", "Query", "QueryError", "parse_get", "parse_post"]

#: Longest wait a blocking query may ask for, in seconds.
MAX_WAIT = 60.0
#: Most space guids one query may list.
MAX_SPACES = 50_000
MAX_LIMIT = 1_000_000
MAX_FROM = 2**63 - 1
_GUID = re.compile(r"^[A-Za-z0-9._:~-]{1,255}$")
_LONGEST_JSON_INT = 40


class QueryError(ValueError):
    """A request parameter is invalid (answered with 400)."""


@dataclass(frozen=True, slots=True)
class _LongNumber:
    """A JSON integer too long to be any valid value; kept as its length only."""

    digits: int

    def __str__(self) -> str:
        return f"a {self.digits}-digit number"


def _json_int(text: str) -> int | _LongNumber:
    digits = len(text.lstrip("-"))
    return _LongNumber(digits) if digits > _LONGEST_JSON_INT else int(text)


def _json_type(value: Any) -> str:
    match value:
        case bool():
            return "boolean"
        case int() | float() | _LongNumber():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return "null"


@dataclass(frozen=True, slots=True)
class Query:
    """A validated query: sorted unique space guids, paging and the blocking wait in seconds."""

    spaces: tuple[str, ...]
    start: int = 0
    limit: int = 0
    wait: float = 0.0


def _spaces(values: Sequence[Any], where: str) -> tuple[str, ...]:
    found: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            raise QueryError(f"{where}: must be strings, not {_json_type(value)}")
        for guid in value.split(","):
            if not guid:
                continue
            if not _GUID.match(guid):
                raise QueryError(f"{where}: {guid[:80]!r} is not a valid guid")
            found.add(guid)
    if len(found) > MAX_SPACES:
        raise QueryError(f"{where}: {len(found)} space guids; at most {MAX_SPACES} are allowed")
    return tuple(sorted(found))


def _integer(value: Any, name: str, maximum: int) -> int:
    if isinstance(value, bool):
        raise QueryError(f"{name}: must be a non-negative integer")
    if isinstance(value, _LongNumber):
        raise QueryError(f"{name}: {value} is outside 0..{maximum}")
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            raise QueryError(f"{name}: {value[:40]!r} is not a non-negative integer")
        significant = value.lstrip("0") or "0"
        if len(significant) > len(str(MAX_FROM)):  # above every maximum: never converted
            raise QueryError(f"{name}: a {len(value)}-digit number is above the maximum {maximum}")
        value = int(significant)
    if not isinstance(value, int) or value < 0:
        raise QueryError(f"{name}: must be a non-negative integer")
    if value > maximum:
        raise QueryError(f"{name}: {value} is above the maximum {maximum}")
    return value


def _wait(value: Any) -> float:
    if isinstance(value, _LongNumber):
        raise QueryError(f"wait: {value} is not between 0 and {MAX_WAIT:.0f} seconds")
    try:
        seconds = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        raise QueryError(f"wait: {str(value)[:40]!r} is not a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:
        raise QueryError(f"wait: must be between 0 and {MAX_WAIT:.0f} seconds")
    return seconds


def _build(spaces: tuple[str, ...], values: Mapping[str, Any]) -> Query:
    return Query(
        spaces=spaces,
        start=_integer(values.get("from", 0), "from", MAX_FROM),
        limit=_integer(values.get("limit", 0), "limit", MAX_LIMIT),
        wait=_wait(values.get("wait", 0)),
    )


def parse_get(params: Sequence[tuple[str, str]]) -> Query:
    """Validate a GET's query string (as a list of key/value pairs)."""
    values = {key: value for key, value in reversed(params)}  # the first occurrence wins
    spaces = _spaces([v for k, v in params if k == "space_guids"], "space_guids")
    return _build(spaces, values)


def parse_post(body: bytes, params: Sequence[tuple[str, str]]) -> Query:
    """Validate a POST: a JSON object body, completed by the query string."""
    try:
        doc = json.loads(body, parse_int=_json_int) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(f"body: not valid JSON: {exc}") from None
    except RecursionError:
        raise QueryError("body: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise QueryError("body: must be a JSON object")
    unknown = sorted(set(doc) - {"space_guids", "from", "limit", "wait"})
    if unknown:
        raise QueryError(f"body: unknown key(s) {', '.join(unknown)}")
    raw = doc.get("space_guids")
    if raw is None:
        spaces = _spaces([v for k, v in params if k == "space_guids"], "space_guids")
    elif isinstance(raw, list):
        spaces = _spaces(raw, "space_guids")
    else:
        raise QueryError("space_guids: must be a JSON array of strings")
    values = {key: value for key, value in reversed(params)}
    values.update({k: v for k, v in doc.items() if k != "space_guids"})
    return _build(spaces, values)
