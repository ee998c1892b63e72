"""The CNI protocol (spec 1.0.0) as a plugin sees it: environment, stdin, results, errors.

Goals and the mechanism serving each:

* **Never a traceback for the runtime** — every problem becomes a :class:`CniError`
  carrying a spec error code; :meth:`CniError.document` is the error JSON the plugin
  prints on stdout (``cniVersion``, ``code``, ``msg``, ``details``).
* **Garbage in, error out** — :func:`read_invocation` accepts only a container id of the
  spec's grammar (``[A-Za-z0-9][A-Za-z0-9_.-]*``, :mod:`dynamic_asgs.asg.grammar`) for
  ADD, DEL and CHECK, before anything is touched; :func:`decode_config` accepts only a JSON object and
  :func:`request_version` only a version this plugin supports; :func:`container_addresses`
  reads the container's IPs from the main plugin's ``prevResult`` defensively.
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynamic_asgs.asg import grammar
from dynamic_asgs.errors import DynamicASGsError

__all__ = [
    "COMMANDS",
    "SPEC_VERSION",
    "SUPPORTED_VERSIONS",
    "Addresses",
    "CniError",
    "Code",
    "Invocation",
    "container_addresses",
    "decode_config",
    "read_invocation",
    "request_version",
    "version_result",
]

SPEC_VERSION = "1.0.0"
#: Versions whose config and ``prevResult`` this plugin reads (their results share the ``ips`` shape).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")


class Code(enum.IntEnum):
    """CNI error codes: 1-99 are the spec's, 100 and up this plugin's."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    AGENT_SYNC_FAILED = 100
    IPTABLES_FAILED = 101
    STORE_FAILED = 102
    CHECK_FAILED = 103
    CHAIN_NAME_COLLISION = 104
    INTERNAL = 199


class CniError(DynamicASGsError):
    """A failure reported to the runtime as CNI error JSON."""

    def __init__(self, code: Code, msg: str, details: str = "") -> None:
        self.code = code
        self.msg = msg
        self.details = details
        super().__init__(f"{msg}: {details}" if details else msg)

    def document(self, cni_version: str) -> dict[str, Any]:
        """The error JSON the plugin prints on stdout."""
        return {"cniVersion": cni_version, "code": int(self.code), "msg": self.msg, "details": self.details}


@dataclass(frozen=True, slots=True)
class Invocation:
    """What the runtime passes in environment variables."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: str = ""
    args: str = ""


def read_invocation(environ: Mapping[str, str]) -> Invocation:
    """Read ``CNI_*`` variables; raise INVALID_ENVIRONMENT when a required one is missing."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        shown = repr(command) if command else "missing"
        raise CniError(Code.INVALID_ENVIRONMENT, "invalid CNI_COMMAND",
                       f"{shown}; expected one of {', '.join(COMMANDS)}")
    inv = Invocation(command, environ.get("CNI_CONTAINERID", ""), environ.get("CNI_NETNS", ""),
                     environ.get("CNI_IFNAME", ""), environ.get("CNI_PATH", ""), environ.get("CNI_ARGS", ""))
    if command == "VERSION":
        return inv
    required = {"CNI_CONTAINERID": inv.container_id, "CNI_IFNAME": inv.ifname}
    if command != "DEL":  # the spec lets a runtime omit the netns on DEL
        required["CNI_NETNS"] = inv.netns
    missing = [name for name, value in required.items() if not value]
    if missing:
        raise CniError(Code.INVALID_ENVIRONMENT, "required environment variables missing", ", ".join(missing))
    try:
        grammar.handle(inv.container_id)
    except ValueError as exc:
        raise CniError(Code.INVALID_ENVIRONMENT, "invalid CNI_CONTAINERID", str(exc)) from None
    return inv


def decode_config(data: bytes) -> dict[str, Any]:
    """The network configuration from stdin: a JSON object, or DECODE_FAILURE."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CniError(Code.DECODE_FAILURE, "cannot decode the network configuration", str(exc)[:300]) from None
    if not isinstance(raw, dict):
        raise CniError(Code.DECODE_FAILURE, "cannot decode the network configuration",
                       f"expected a JSON object, got {type(raw).__name__}")
    return raw


def request_version(raw: Mapping[str, Any], *, default: str = SPEC_VERSION) -> str:
    """The request's ``cniVersion`` if this plugin supports it; INCOMPATIBLE_VERSION otherwise."""
    version = raw.get("cniVersion", default)
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(Code.INCOMPATIBLE_VERSION, "incompatible CNI version",
                       f"{version!r} is not one of {', '.join(SUPPORTED_VERSIONS)}")
    return version


def version_result(cni_version: str) -> dict[str, Any]:
    """The VERSION command's answer."""
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


@dataclass(frozen=True, slots=True)
class Addresses:
    """The container's addresses (without prefix length); ``ipv6`` may be empty."""

    ipv4: str
    ipv6: str = ""


def _sandbox_interfaces(result: Mapping[str, Any]) -> set[int]:
    interfaces = result.get("interfaces")
    if not isinstance(interfaces, list):
        return set()
    return {i for i, iface in enumerate(interfaces) if isinstance(iface, dict) and iface.get("sandbox")}


def container_addresses(prev_result: Any) -> Addresses:
    """The container's first IPv4 (and IPv6) address in ``prevResult``.

    Addresses on a sandbox (container-side) interface win over others; a result
    without any IPv4 address is INVALID_CONFIG.
    """
    if not isinstance(prev_result, dict):
        raise CniError(Code.INVALID_CONFIG, "missing prevResult",
                       "dynamic-asgs-cni is a chained plugin: it needs the main plugin's result")
    ips = prev_result.get("ips")
    if not isinstance(ips, list):
        raise CniError(Code.INVALID_CONFIG, "invalid prevResult", "prevResult.ips must be a list")
    sandboxes = _sandbox_interfaces(prev_result)
    found: dict[int, list[tuple[bool, str]]] = {4: [], 6: []}
    for i, entry in enumerate(ips):
        address = entry.get("address") if isinstance(entry, dict) else None
        if not isinstance(address, str):
            raise CniError(Code.INVALID_CONFIG, "invalid prevResult", f"prevResult.ips[{i}].address must be a string")
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError:
            raise CniError(Code.INVALID_CONFIG, "invalid prevResult",
                           f"prevResult.ips[{i}].address: {address[:60]!r} is not an address/prefix") from None
        index = entry.get("interface")
        found[iface.version].append((isinstance(index, int) and index in sandboxes, str(iface.ip)))
    if not found[4]:
        raise CniError(Code.INVALID_CONFIG, "invalid prevResult", "prevResult holds no IPv4 address")

    def best(items: list[tuple[bool, str]]) -> str:
        return next((ip for sandbox, ip in items if sandbox), items[0][1]) if items else ""

    return Addresses(best(found[4]), best(found[6]))
