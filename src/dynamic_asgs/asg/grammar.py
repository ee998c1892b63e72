"""The grammar of every container value that comes from outside (CNI input, the metadata store).

Handles, IPs, GUIDs and the rest reach iptables text (chain names, ``--hashlimit-name``,
log prefixes, ``-s``), the policy server's query (``space_guids=a,b``) and the
``translate`` tool's output. Each grammar is defined once, here, tight enough that no
value can leave its token (no whitespace, control character, quote, comma or ``%``
where it does not belong) and loose enough for every value Garden, Diego and Cloud
Controller produce (silk's datastore holds exactly what the CNI was given):

* **handle** — the CNI spec's container id (``[A-Za-z0-9][A-Za-z0-9_.-]*``), at most
  :data:`MAX_HANDLE` characters: ``5fa0c0de-1111-4e2f-9aaa-0123456789ab`` (a task or
  staging GUID), ``32a7bfc2-699f-495b-51b6-3e18`` (a Diego instance guid),
  ``check-32a7bfc2-699f-495b-51b6-3e18`` (a health-check container).
* **guid** (``policy_group_id``, ``space_id``, log_config ``guid``) — the same
  characters, at most :data:`MAX_GUID`; Cloud Controller's GUIDs are UUIDs.
* **workload** (``container_workload``) — the same characters, at most 64: ``app``,
  ``task``, ``staging`` (anything else gets no ASG: deny all egress).
* **ip** / **ipv6** — an address literal without a zone (``%eth0``): ``10.255.0.7``,
  ``fd00::7``; ``ip`` may be either family (silk's ``net.ParseIP``), ``ipv6`` only IPv6.
* **ports** — port numbers separated by commas, spaces allowed around them:
  ``8080``, ``8080,2222``, ``8080, 9090`` (silk's planner trims them).
* **log_config** — a JSON object in a string of at most :data:`MAX_LOG_CONFIG`
  characters (Diego's executor ``LogConfig``): ``guid`` (a guid), ``index`` (an integer
  0 ... 2^31-1), ``source_name`` (``CELL``, ``APP/PROC/WEB``: printable ASCII without
  space or quote, at most 64), ``tags`` (at most 64 strings to strings, none with a
  control character, at most 1024 characters each: app, space and org names).

An empty optional field is allowed wherever the store contract allows it (DESIGN.md §3.4).
Every function raises :class:`ValueError` with the reason; callers add where.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_GUID", "MAX_HANDLE", "MAX_LOG_CONFIG", "LogConfig", "guid", "handle", "ip", "log_config", "ports",
           "shown", "workload"]

MAX_HANDLE = 128
MAX_GUID = 128
MAX_LOG_CONFIG = 16 * 1024
_MAX_WORKLOAD = 64
_MAX_SOURCE = 64
_MAX_TAGS = 64
_MAX_TAG = 1024
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORTS = re.compile(r" *[0-9]{1,5} *(?:, *[0-9]{1,5} *)*")
_SOURCE = re.compile(r"[A-Za-z0-9_./:-]+")


def shown(value: Any) -> str:
    """A value as error messages show it: strings quoted and cut, anything else by type."""
    if isinstance(value, str):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    return f"a {type(value).__name__}"


def _identifier(value: Any, limit: int, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {shown(value)}")
    if not value:
        raise ValueError("must not be empty")
    if len(value) > limit:
        raise ValueError(f"{shown(value)} is longer than {limit} characters")
    if not _ID.fullmatch(value):
        raise ValueError(f"{shown(value)} is not {what} (a letter or digit, then letters, digits, '_', '.', '-')")
    return value


def handle(value: Any) -> str:
    """A container handle (the CNI spec's container id)."""
    return _identifier(value, MAX_HANDLE, "a container id")


def guid(value: Any, *, optional: bool = True) -> str:
    """A GUID (app, space); ``""`` (or a missing value, None) when ``optional``."""
    if optional and (value is None or value == ""):
        return ""
    return _identifier(value, MAX_GUID, "a GUID")


def workload(value: Any) -> str:
    """A ``container_workload`` (``""`` when missing)."""
    if value is None or value == "":
        return ""
    return _identifier(value, _MAX_WORKLOAD, "a workload name")


def ip(value: Any, *, version: int | None = None) -> str:
    """An address literal of ``version`` (either when None), without zone; ``""`` when missing."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {shown(value)}")
    address = None
    if _ADDRESS.fullmatch(value):  # also keeps out zones ("fe80::1%eth0"): ipaddress takes any text after '%'
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(value)
    if address is None:
        raise ValueError(f"{shown(value)} is not an IP address")
    if version is not None and address.version != version:
        raise ValueError(f"{shown(value)} is not an IPv{version} address")
    return value


def ports(value: Any) -> str:
    """The container's ports (``""`` when missing)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {shown(value)}")
    if len(value) > 4096 or not _PORTS.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a comma-separated list of port numbers")
    for port in value.split(","):
        if int(port) > 65535:
            raise ValueError(f"{shown(value)}: port {int(port)} is outside 0-65535")
    return value


@dataclass(frozen=True, slots=True)
class LogConfig:
    """What the agent uses of a container's ``log_config``."""

    guid: str = ""
    index: str = ""
    source_name: str = ""
    tags: tuple[tuple[str, str], ...] = ()


def _index(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError(f"index: must be an integer in 0 ... 2^31-1, not {shown(value)}")
    return str(value)


def _source(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > _MAX_SOURCE or not _SOURCE.fullmatch(value):
        raise ValueError(f"source_name: {shown(value)} is not a source name")
    return value


def _tags(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or len(value) > _MAX_TAGS:
        raise ValueError(f"tags: must be an object of at most {_MAX_TAGS} strings")
    for key, text in value.items():
        if not isinstance(text, str):
            raise ValueError(f"tags.{shown(key)}: must be a string, not {shown(text)}")
        for part in (key, text):
            if len(part) > _MAX_TAG or not part.isprintable():
                raise ValueError(f"tags.{shown(key)}: {shown(part)} is longer than {_MAX_TAG} characters "
                                 "or holds a control character")
    return tuple(sorted(value.items()))


def log_config(value: Any) -> LogConfig:
    """Parse a ``log_config`` string (an empty one, or none, is an empty config)."""
    if value is None or value == "":
        return LogConfig()
    if not isinstance(value, str):
        raise ValueError(f"must be a string holding a JSON object, not {shown(value)}")
    if len(value) > MAX_LOG_CONFIG:
        raise ValueError(f"is longer than {MAX_LOG_CONFIG} characters")
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer of thousands of digits
        raise ValueError(f"is not JSON: {str(exc)[:120]}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"must hold a JSON object, not {shown(parsed)}")
    try:
        app = guid(parsed.get("guid"))
    except ValueError as exc:
        raise ValueError(f"guid: {exc}") from None
    return LogConfig(app, _index(parsed.get("index")), _source(parsed.get("source_name")),
                     _tags(parsed.get("tags")))
