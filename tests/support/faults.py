"""Fault injection for tests/faults: figures, a table sampler, a cuttable TCP proxy, a fake policy server.

* :func:`record` appends one figure (faults injected, bad inputs tried, invariant
  violations, a recovery time) to the JSON-lines file named by ``DASG_FAULT_FIGURES``
  (``bench/faults.py`` sets it and sums the lines); without it, it does nothing.
* :class:`TableSampler` runs ``iptables-save`` of a cell in a loop, without the lock,
  concurrently with whatever the test does, and collects what a check finds wrong.
* :class:`TcpProxy` forwards 127.0.0.1:port to a database and, when armed, cuts every
  connection the moment the client sends a chosen statement (before forwarding it, or
  after forwarding it and before the answer), as a DB restart or a network cut would.
* :class:`FakePolicyServer` speaks the policy server's wire format over mutual TLS and
  can answer 500, garbage, a wrong schema, a truncated body, slowly, or not at all.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dynamic_asgs.asg import chains
from dynamic_asgs.asg.translate import ContainerChains
from dynamic_asgs.http.server import Background, ThreadedServer
from dynamic_asgs.iptables.render import content_hash
from dynamic_asgs.local.pki import Pki
from dynamic_asgs.tls import server_context
from support.cell import Cell
from support.netns import ns_run
from support.plans import chains_in_save, digest_of, jump_targets

__all__ = ["FakePolicyServer", "TableSampler", "TcpProxy", "convergence_problems", "expected_rulesets", "figures_file",
           "record", "ruleset_check"]

FIGURES_ENV = "DASG_FAULT_FIGURES"


def record(kind: str, *, injected: int = 0, bad_inputs: int = 0, violations: int = 0,
           recoveries: list[float] | None = None, **extra: Any) -> None:
    """Add figures for ``kind`` to the bench's figures file (if one is configured)."""
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    line = {"kind": kind, "injected": injected, "bad_inputs": bad_inputs, "violations": violations,
            "recoveries": [round(r, 3) for r in recoveries or []], **extra}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


class TableSampler:
    """``iptables-save`` of ``cell`` in a loop (no lock, like an outside reader); ``check`` finds problems."""

    def __init__(self, cell: Cell, check: Callable[[int, str], list[str]], versions: tuple[int, ...] = (4, 6)
                 ) -> None:
        self.cell, self.check, self.versions = cell, check, versions
        self.samples = 0
        self.problems: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="table-sampler", daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            for version in self.versions:
                text = ns_run(self.cell.ns, [self.cell.tool(version, "save"), "-t", "filter"], check=False).stdout
                if text:
                    self.problems.extend(self.check(version, text))
            self.samples += 1

    def __enter__(self) -> TableSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(60)


class TcpProxy:
    """127.0.0.1:``port`` -> ``upstream``; :meth:`cut_on` arms a cut at the next matching client statement."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pattern: re.Pattern[bytes] | None = None
        self._after: re.Pattern[bytes] | None = None
        self._forward_first = False
        self._conns: list[socket.socket] = []
        self.cuts = 0
        self._stopped = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def cut_on(self, pattern: bytes, *, after: bytes | None = None, forward_first: bool = False) -> None:
        """Cut every connection when a client sends ``pattern`` (a regex); once, then disarm.

        With ``after``, only on a connection that sent ``after`` before (e.g. the COMMIT of a
        transaction that wrote a given table); with ``forward_first`` the statement reaches
        the server and only its answer is lost.
        """
        with self._lock:
            self._pattern, self._forward_first = re.compile(pattern, re.IGNORECASE), forward_first
            self._after = re.compile(after, re.IGNORECASE) if after else None

    @property
    def armed(self) -> bool:
        with self._lock:
            return self._pattern is not None

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        primed = False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = False
                if from_client:
                    with self._lock:
                        ready = self._after is None or primed
                        if self._pattern is not None and ready and self._pattern.search(data):
                            cut, forward_first, self._pattern = True, self._forward_first, None
                        primed = primed or bool(self._after is not None and self._after.search(data))
                    if cut and forward_first:
                        dst.sendall(data)
                        time.sleep(0.2)  # let the server act on it; the client never hears back
                if cut:
                    self.cut_all()
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut_all(self) -> None:
        """Reset every open connection (RST, as a dying server's kernel would)."""
        with self._lock:
            conns, self._conns = self._conns, []
            self.cuts += 1
        for s in conns:
            # shutdown() first: close() alone neither wakes the pipe thread blocked in recv() nor
            # tells the server, whose backend would then sit idle in transaction holding its locks.
            with suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                s.close()

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        self.cut_all()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, body_in: bytes = b"") -> None:
        fake = self.server.fake
        fake.requests += 1
        mode = fake.mode
        if mode == "slow":
            time.sleep(fake.delay)
        refused = sorted(fake.refuse_spaces & _asked_spaces(self.path, body_in))
        if refused:  # what the policy server answers a space_guids value it does not accept
            body, status, ctype = json.dumps({"error": f"space_guids: {refused[0]!r} is not a GUID"}).encode(), \
                400, "application/json"
        elif mode == "500":
            body, status, ctype = b'{"error": "database is on fire"}', 500, "application/json"
        elif mode == "garbage":
            body, status, ctype = b"\x00\xffnot json at all {{{", 200, "application/json"
        elif mode == "wrong-schema":
            body, status, ctype = json.dumps({"next": "x", "security_groups": [{"guid": 7}]}).encode(), 200, \
                "application/json"
        elif mode == "html":
            body, status, ctype = b"<html>502 Bad Gateway</html>", 200, "text/html"
        else:
            body, status, ctype = json.dumps(fake.document).encode(), 200, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("X-Dataset-Version", str(fake.version))
        if mode == "truncated":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(self.rfile.read(length))


def _asked_spaces(path: str, body: bytes) -> set[str]:
    """The space guids of a GET query string or a POST body."""
    spaces = {g for v in parse_qs(urlsplit(path).query).get("space_guids", []) for g in v.split(",")}
    if body:
        try:
            doc = json.loads(body)
        except ValueError:
            return spaces
        if isinstance(doc, dict) and isinstance(doc.get("space_guids"), list):
            spaces |= {g for g in doc["space_guids"] if isinstance(g, str)}
    return spaces


class _Server(ThreadedServer):
    fake: FakePolicyServer


class FakePolicyServer:
    """A policy server over mutual TLS whose answers the test chooses (``mode``)."""

    def __init__(self, pki: Pki, document: dict[str, Any], *, version: int = 1) -> None:
        self.document, self.version = document, version
        self.mode = "ok"
        self.delay = 0.0
        self.refuse_spaces: set[str] = set()  # answered 400 whenever a request names one
        self.requests = 0
        self._context: ssl.SSLContext = server_context(ca_file=str(pki.server.ca), cert_file=str(pki.server.cert),
                                                       key_file=str(pki.server.key))
        self._httpd: Background | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        """Listen (again, on the same port)."""
        httpd = _Server(("127.0.0.1", self.port), _Handler)
        httpd.fake = self
        httpd.socket = self._context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = Background(httpd, name="fake-policy-server").start()
        self.port = self._httpd.port

    def down(self) -> None:
        """Stop listening: connections are refused, as with a dead policy server."""
        if self._httpd is not None:
            self._httpd.stop()
            self._httpd = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.down()


@contextmanager
def figures_file(path: Path) -> Iterator[Path]:
    """Point :func:`record` at ``path`` for the duration (used by the bench's own checks)."""
    old = os.environ.get(FIGURES_ENV)
    os.environ[FIGURES_ENV] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop(FIGURES_ENV, None)
        else:
            os.environ[FIGURES_ENV] = old


# -- table invariants ------------------------------------------------------------------------


def expected_rulesets(plans: Iterable[ContainerChains]) -> dict[int, dict[str, int]]:
    """What :func:`ruleset_check` accepts: per family, each ruleset's hash -> its ASG chain's rule count,
    and each shared chain's name -> its rule count (the ``shared`` layout)."""
    out: dict[int, dict[str, int]] = {4: {}, 6: {}}
    for p in plans:
        for fam in p.families:
            out[fam.version][content_hash(fam)] = len(fam.asg.rules)
            out[fam.version].update((shared.name, len(shared.rules)) for shared in fam.shared)
    return out


def ruleset_check(handles: list[str], expected: dict[int, dict[str, int]]) -> Callable[[int, str], list[str]]:
    """A sampler check: every container enforces one complete known ruleset (``expected``: :func:`expected_rulesets`).

    A container whose parent is still the CNI's lone REJECT (before its first write, or a
    family without rules) is fine: it fails closed. Anything else must be a parent that
    jumps, with the ruleset's hash, to an ASG chain holding exactly that ruleset's rules, and
    every shared chain that ASG chain jumps to must hold exactly its own rules.
    """

    def check(version: int, text: str) -> list[str]:
        table = chains_in_save(text)
        problems = []
        for handle in handles:
            asg, parent = chains.asg_chain_name(handle), chains.netout_chain_name(handle)
            rules, jump = table.get(asg), table.get(parent, [])
            if rules is None:
                if len(jump) == 1 and "REJECT" in jump[0]:
                    continue
                problems.append(f"IPv{version} {handle}: no ASG chain, parent {jump}")
                continue
            digest = digest_of(rules[0]) if rules else None
            if digest not in expected[version]:
                problems.append(f"IPv{version} {handle}: ASG chain without a known ruleset hash: {rules[:1]}")
            elif len(rules) != expected[version][digest]:
                problems.append(f"IPv{version} {handle}: {len(rules)} rules, ruleset {digest} has "
                                f"{expected[version][digest]}")
            for shared in filter(chains.is_shared_chain, jump_targets(rules)):
                held = table.get(shared)
                if held is None or len(held) != expected[version].get(shared) or \
                        digest_of(held[0]) != shared.removeprefix(chains.SHARED_PREFIX):
                    problems.append(f"IPv{version} {handle}: shared chain {shared} holds {held and held[:1]}")
            if len(jump) != 2 or digest_of(jump[0]) != digest or not jump[0].endswith(f"-j {asg}") \
                    or "REJECT" not in jump[1]:
                problems.append(f"IPv{version} {handle}: parent {jump} does not enforce ruleset {digest}")
        return problems

    return check


def convergence_problems(text: str, version: int, want: dict[str, str | None]) -> list[str]:
    """What keeps the table of ``version`` from being exactly ``want`` (handle -> ruleset hash or None).

    Checks: each container's ASG chain carries the wanted hash (None: no chain, parent a lone
    REJECT); no owned chain other than the wanted ones (no leftover ``asg-``/``casg-``, no
    shared chain that no wanted chain jumps to, none missing); no duplicate rule in any chain.
    """
    table = chains_in_save(text)
    problems = []
    wanted_chains = {chains.asg_chain_name(h) for h, d in want.items() if d is not None}
    used = {t for name in wanted_chains for t in jump_targets(table.get(name, [])) if chains.is_shared_chain(t)}
    leftovers = sorted(n for n in table if n.startswith(("asg-", "casg-", chains.SHARED_PREFIX))
                       and n not in wanted_chains | used)
    if leftovers:
        problems.append(f"IPv{version}: leftover chains {leftovers}")
    if missing := sorted(used - table.keys()):
        problems.append(f"IPv{version}: shared chains jumped to but missing {missing}")
    for name, rules in table.items():
        if len(set(rules)) != len(rules):
            problems.append(f"IPv{version}: duplicate rules in {name}")
    for handle, digest in want.items():
        asg, parent = chains.asg_chain_name(handle), chains.netout_chain_name(handle)
        found, jump = table.get(asg), table.get(parent, [])
        if digest is None:
            if found is not None or len(jump) != 1 or "REJECT" not in jump[0]:
                problems.append(f"IPv{version} {handle}: wanted no ASG chain, found {found and found[:1]}, {jump}")
            continue
        if not found or digest_of(found[0]) != digest:
            problems.append(f"IPv{version} {handle}: wanted ruleset {digest}, found {found[:1] if found else None}")
        if len(jump) != 2 or digest_of(jump[0]) != digest:
            problems.append(f"IPv{version} {handle}: parent {jump} does not enforce {digest}")
    return problems
