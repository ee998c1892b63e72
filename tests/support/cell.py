"""A Diego cell in network namespaces, with real traffic, for dataplane, agent and CNI tests.

::

    container ns c<i> (10.255.<i>.2, fd00:255:<i>::2)
        | veth                                         (one per container)
    cell ns: routes, forwarding, the filter table (legacy or nft), CNI-style hooks
        | bridge "underlay0" (198.18.0.1/16, fd00:198::1/64)
    destination ns d<j>: any addresses in 198.18.0.0/16 / fd00:198::/64,
        TCP (greeting + echo) and UDP (echo) listeners on chosen ports

:meth:`Cell.hook` does what the CNI does for a container: it creates the
parent chain ``netout--<handle>`` (a lone REJECT until the agent writes it) and
``FORWARD -s <ip> -o underlay0 -j netout--<handle>``, in both families.
:meth:`Cell.probe` opens a connection (or sends an ICMP echo) from a container
and answers ``ok``, ``refused``, ``timeout``, ``unreachable`` or ``error:...``.
Everything (namespaces, processes) is removed on exit, even when a test fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from dynamic_asgs.asg import chains
from dynamic_asgs.iptables.runner import IptablesRunner, commands_for
from dynamic_asgs.local import netprobe
from support.netns import netns, ns_run

PROBE = netprobe.__file__
UNDERLAY = "underlay0"


@dataclass
class CellContainer:
    handle: str
    index: int
    ns: str
    ip: str
    ip6: str
    prober: subprocess.Popen[str] | None = None


@dataclass
class Destination:
    name: str
    ns: str
    addrs: tuple[str, ...]
    listener: subprocess.Popen[str]


class Cell:
    """The cell namespace and what hangs off it; build with :func:`cell`."""

    def __init__(self, backend: str, ns: str, lock_file: Path, stack: ExitStack) -> None:
        self.backend = backend
        self.ns = ns
        self.lock_file = lock_file
        self._stack = stack
        self.containers: dict[str, CellContainer] = {}
        self.destinations: dict[str, Destination] = {}

    # -- topology ----------------------------------------------------------------------

    def add_container(self, handle: str) -> CellContainer:
        """A container namespace wired to the cell (not hooked: see :meth:`hook`)."""
        i = len(self.containers) + 1
        ns = _namespace(self._stack, "c")
        ip, ip6 = f"10.255.{i}.2", f"fd00:255:{i}::2"
        host = f"c{i}"
        self.ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.ip("addr", "add", f"10.255.{i}.1/24", "dev", host)
        self.ip("addr", "add", f"fd00:255:{i}::1/64", "dev", host, "nodad")
        self.ip("link", "set", host, "up")
        for cmd in (["addr", "add", f"{ip}/24", "dev", "eth0"], ["addr", "add", f"{ip6}/64", "dev", "eth0", "nodad"],
                    ["link", "set", "eth0", "up"], ["route", "add", "default", "via", f"10.255.{i}.1"],
                    ["-6", "route", "add", "default", "via", f"fd00:255:{i}::1"]):
            ns_run(ns, ["ip", *cmd])
        container = CellContainer(handle, i, ns, ip, ip6)
        self.containers[handle] = container
        return container

    def add_destination(self, name: str, addrs: Sequence[str], *, tcp: Sequence[int] = (),
                        udp: Sequence[int] = ()) -> Destination:
        """A destination namespace on the underlay holding ``addrs``, with listeners on the ports."""
        j = len(self.destinations) + 1
        ns = _namespace(self._stack, "d")
        host = f"u{j}"
        self.ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.ip("link", "set", host, "master", UNDERLAY, "up")
        cmds = [["link", "set", "eth0", "up"]]
        for addr in addrs:
            prefix = "/64" if ":" in addr else "/16"
            cmds.append(["addr", "add", addr + prefix, "dev", "eth0", *(["nodad"] if ":" in addr else [])])
        if any(":" not in a for a in addrs):
            cmds.append(["route", "add", "default", "via", "198.18.0.1"])
        if any(":" in a for a in addrs):
            cmds.append(["-6", "route", "add", "default", "via", "fd00:198::1"])
        for cmd in cmds:
            ns_run(ns, ["ip", *cmd])
        listener = self._spawn(ns, ["listen", "--tcp", ",".join(map(str, tcp)), "--udp", ",".join(map(str, udp)),
                                    "--addrs", ",".join(addrs)])
        assert listener.stdout is not None
        ready = listener.stdout.readline().strip()
        assert ready == "ready", f"listener in {ns} did not start: {ready!r}"
        dest = Destination(name, ns, tuple(addrs), listener)
        self.destinations[name] = dest
        return dest

    def hook(self, handle: str, versions: Sequence[int] = (4, 6)) -> None:
        """What the CNI does on create: a parent chain (lone REJECT) and the FORWARD jump to it."""
        c = self.containers[handle]
        parent = chains.netout_chain_name(handle)
        for version in versions:
            reject = "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"
            src = c.ip if version == 4 else c.ip6
            self.restore(version, [f":{parent} - [0:0]", f"-A {parent} -j REJECT --reject-with {reject}",
                                   f"-A FORWARD -s {src} -o {UNDERLAY} -j {parent}"])

    def unhook(self, handle: str, versions: Sequence[int] = (4, 6)) -> None:
        """What the CNI does on delete: remove the FORWARD jump, flush and delete the parent chain."""
        c = self.containers[handle]
        parent = chains.netout_chain_name(handle)
        for version in versions:
            src = c.ip if version == 4 else c.ip6
            self.restore(version, [f"-D FORWARD -s {src} -o {UNDERLAY} -j {parent}", f"-F {parent}",
                                   f"-X {parent}"])

    # -- iptables ----------------------------------------------------------------------

    def tool(self, version: int, kind: str = "") -> str:
        base = ("ip6tables" if version == 6 else "iptables") + f"-{self.backend}"
        return f"{base}-{kind}" if kind else base

    def runner(self, version: int, *, prefix: Sequence[str] = ()) -> IptablesRunner:
        """An agent runner for this cell's table (``prefix`` goes before ``ip netns exec``)."""
        restore, save = commands_for(version, self.backend)
        return IptablesRunner(version=version, restore_cmd=restore, save_cmd=save, lock_file=self.lock_file,
                              lock_timeout=30, prefix=(*prefix, "ip", "netns", "exec", self.ns))

    def runners(self, **kw: Sequence[str]) -> dict[int, IptablesRunner]:
        return {4: self.runner(4, **kw), 6: self.runner(6, **kw)}

    def restore(self, version: int, lines: Sequence[str]) -> None:
        payload = "\n".join(["*filter", *lines, "COMMIT"]) + "\n"
        ns_run(self.ns, [self.tool(version, "restore"), "-w", "5", "--noflush"], input=payload)

    def save(self, version: int) -> str:
        return ns_run(self.ns, [self.tool(version, "save"), "-t", "filter"]).stdout

    def rules(self, version: int, chain: str) -> list[str]:
        """``iptables -S chain`` (empty if the chain does not exist)."""
        out = ns_run(self.ns, [self.tool(version), "-w", "-S", chain], check=False)
        return out.stdout.splitlines()[1:] if out.returncode == 0 else []

    def enforced(self, version: int, asg: str) -> list[str]:
        """A container's ASG chain's rules, each jump to a shared chain replaced by that chain's rules.

        What the container is granted, in either chain layout (``asg_chain_layout``)."""
        out = []
        for rule in self.rules(version, asg):
            target = rule.rsplit(" -j ", 1)[-1] if " -j " in rule else ""
            out += self.rules(version, target) if chains.is_shared_chain(target) else [rule]
        return out

    def exists(self, version: int, chain: str) -> bool:
        return ns_run(self.ns, [self.tool(version), "-w", "-S", chain], check=False).returncode == 0

    def packets(self, version: int, chain: str) -> list[int]:
        """Packet counters of ``chain``'s rules, in order."""
        out = ns_run(self.ns, [self.tool(version), "-w", "-L", chain, "-v", "-x", "-n"]).stdout
        return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]

    # -- traffic -----------------------------------------------------------------------

    def probe(self, handle: str, op: str, addr: str, port: int = 0, *, conn: str = "",
              timeout: float = 1.5) -> str:
        """Connect from ``handle``'s namespace: ``op`` is tcp, udp, icmp, open or send."""
        c = self.containers[handle]
        if c.prober is None:
            c.prober = self._spawn(c.ns, ["probe"])
        assert c.prober.stdin is not None and c.prober.stdout is not None
        c.prober.stdin.write(json.dumps({"op": op, "addr": addr, "port": port, "id": conn,
                                         "timeout": timeout}) + "\n")
        c.prober.stdin.flush()
        return str(json.loads(c.prober.stdout.readline())["result"])

    def ip(self, *args: str) -> None:
        ns_run(self.ns, ["ip", *args])

    def _spawn(self, ns: str, args: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE, *args], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._stack.callback(_stop, proc)
        return proc


def _namespace(stack: ExitStack, tag: str) -> str:
    """A fresh namespace (deleted by ``stack``) where IPv6 addresses are usable at once (no DAD)."""
    ns = stack.enter_context(netns(tag))
    ns_run(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
    return ns


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


@contextmanager
def cell(backend: str, tmp_path: Path) -> Iterator[Cell]:
    """A cell namespace for ``backend`` (``legacy`` or ``nft``) with its underlay bridge; all removed on exit."""
    with ExitStack() as stack:
        ns = _namespace(stack, "cell")
        # REJECT answers with ICMP errors: rate-limiting them would turn quick refusals into timeouts.
        ns_run(ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"])
        the_cell = Cell(backend, ns, tmp_path / "iptables.lock", stack)
        for cmd in (["link", "add", UNDERLAY, "type", "bridge"], ["addr", "add", "198.18.0.1/16", "dev", UNDERLAY],
                    ["addr", "add", "fd00:198::1/64", "dev", UNDERLAY, "nodad"], ["link", "set", UNDERLAY, "up"]):
            the_cell.ip(*cmd)
        yield the_cell
