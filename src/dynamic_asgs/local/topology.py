"""Network namespaces of the local environment: a cell, its containers' namespaces and destinations.

::

    container ns <id>-c<i>  (address from host-local IPAM, via the ptp CNI plugin)
        | veth made by ptp
    cell ns <id>-cell: forwarding, the filter table the agent and the CNI write
        | veth underlay0 (192.0.2.1/24)
    destination ns <id>-dest (192.0.2.2/24): the services of :data:`SERVICES` on its loopback

Only ``ip`` and ``sysctl`` inside namespaces are used; the root namespace's tables
and links are never touched.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from dynamic_asgs.errors import DynamicASGsError

__all__ = ["SERVICES", "UNDERLAY", "Service", "add_namespace", "delete_namespace", "ip", "namespace_exists",
           "run", "wire_cell", "wire_destination"]

UNDERLAY = "underlay0"
_CELL_UNDERLAY, _DEST_UNDERLAY = "192.0.2.1", "192.0.2.2"


@dataclass(frozen=True, slots=True)
class Service:
    """A listening service in the destination namespace, matching a group of local/examples/asgs.yml."""

    name: str
    address: str
    tcp: tuple[int, ...] = ()
    udp: tuple[int, ...] = ()


SERVICES = (
    Service("public-dns", "8.8.8.8", tcp=(53,), udp=(53,)),
    Service("payments-db", "10.10.10.5", tcp=(5432, 6432)),
    Service("build-mirror", "10.20.0.15", tcp=(443, 8080)),
    Service("not-in-any-asg", "10.30.0.1", tcp=(80,)),
)


def run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; a failure raises an error naming the command and its stderr."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise DynamicASGsError(f"{' '.join(cmd)}: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    return proc


def ip(ns: str, *args: str) -> None:
    """``ip <args>`` inside namespace ``ns``."""
    run(["ip", "netns", "exec", ns, "ip", *args])


def namespace_exists(name: str) -> bool:
    return name in run(["ip", "netns", "list"]).stdout.split()


def add_namespace(name: str) -> None:
    """Create namespace ``name`` with its loopback up."""
    run(["ip", "netns", "add", name])
    ip(name, "link", "set", "lo", "up")


def delete_namespace(name: str) -> None:
    """Delete namespace ``name`` (and with it its links and iptables tables); absent is fine."""
    if namespace_exists(name):
        run(["ip", "netns", "delete", name])


def wire_cell(cell: str, dest: str) -> None:
    """Forwarding in the cell, the underlay link to the destination namespace and routes both ways."""
    run(["ip", "netns", "exec", cell, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0"])
    run(["ip", "netns", "exec", cell, "ip", "link", "add", UNDERLAY, "type", "veth", "peer", "name", "eth0",
         "netns", dest])
    ip(cell, "addr", "add", f"{_CELL_UNDERLAY}/24", "dev", UNDERLAY)
    ip(cell, "link", "set", UNDERLAY, "up")
    ip(dest, "addr", "add", f"{_DEST_UNDERLAY}/24", "dev", "eth0")
    ip(dest, "link", "set", "eth0", "up")
    ip(dest, "route", "add", "default", "via", _CELL_UNDERLAY)
    for service in SERVICES:
        ip(cell, "route", "add", f"{service.address}/32", "via", _DEST_UNDERLAY)


def wire_destination(dest: str) -> None:
    """Give the destination namespace every service address."""
    for service in SERVICES:
        ip(dest, "addr", "add", f"{service.address}/32", "dev", "lo")
