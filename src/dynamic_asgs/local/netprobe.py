"""Helper processes that run inside network namespaces (stdlib only; used by the local environment and tests).

``python netprobe.py listen --tcp 80,443 --udp 53 --addrs 198.18.1.1,fd00:198::11``
    TCP: greets every connection with ``ok\\n`` and then echoes (every address of the
    namespace, IPv4 and IPv6); UDP: echoes every datagram (on each of ``--addrs``).
    Prints ``ready``.

``python netprobe.py probe``
    Reads one JSON command per line on stdin and answers one JSON line:
    ``{"op": "tcp"|"udp"|"icmp", "addr": ..., "port": ..., "timeout": ...}`` ->
    ``{"result": "ok"|"refused"|"timeout"|"unreachable"|"error:<name>"}``;
    ``{"op": "open", "id": k, "addr", "port"}`` keeps a TCP connection open and
    ``{"op": "send", "id": k}`` exchanges one line over it (established traffic).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import selectors
import socket
import struct
import sys
import time

__all__ = ["listen", "main", "probe"]

_RESULTS = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "unreachable", errno.ENETUNREACH: "unreachable",
            errno.EACCES: "refused", errno.EPERM: "refused"}


def _classify(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    return _RESULTS.get(exc.errno or 0, f"error:{errno.errorcode.get(exc.errno or 0, exc)}")


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def listen(tcp: list[int], udp: list[int], addrs: list[str]) -> None:
    sel = selectors.DefaultSelector()
    for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for port in tcp:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((any_addr, port))
            s.listen(64)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, "accept")
    # One UDP socket per address, so that a reply leaves from the address the client sent to.
    for addr in addrs:
        for port in udp:
            s = socket.socket(_family(addr), socket.SOCK_DGRAM)
            s.bind((addr, port))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data == "accept":
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    conn.send(b"ok\n")
                    sel.register(conn, selectors.EVENT_READ, "echo")
                elif key.data == "udp":
                    data, peer = sock.recvfrom(2048)
                    sock.sendto(data, peer)
                else:
                    data = sock.recv(2048)
                    if data:
                        sock.send(data)
                    else:
                        sel.unregister(sock)
                        sock.close()
            except OSError:
                if key.data == "echo":
                    sel.unregister(sock)
                    sock.close()


def _tcp(addr: str, port: int, timeout: float) -> str:
    with socket.socket(_family(addr), socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
            return "ok" if s.recv(16).startswith(b"ok") else "error:no-greeting"
        except OSError as exc:
            return _classify(exc)


def _udp(addr: str, port: int, timeout: float) -> str:
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
            payload = os.urandom(8)
            s.send(payload)
            return "ok" if s.recv(64) == payload else "error:bad-echo"
        except OSError as exc:
            return _classify(exc)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _icmp(addr: str, timeout: float) -> str:
    six = ":" in addr
    proto = socket.IPPROTO_ICMPV6 if six else socket.IPPROTO_ICMP
    echo, reply, unreachable = (128, 129, 1) if six else (8, 0, 3)
    ident, seq = random.randrange(1, 0xFFFF), 1
    header = struct.pack("!BBHHH", echo, 0, 0, ident, seq) + b"netprobe"
    if not six:  # the kernel computes ICMPv6 checksums itself
        header = header[:2] + struct.pack("!H", _checksum(header)) + header[4:]
    with socket.socket(_family(addr), socket.SOCK_RAW, proto) as s:
        s.settimeout(timeout)
        s.sendto(header, (addr, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                packet = s.recv(2048)
            except OSError as exc:
                return _classify(exc)
            body = packet if six else packet[(packet[0] & 0x0F) * 4:]
            kind = body[0]
            if kind == reply and struct.unpack("!H", body[4:6])[0] == ident:
                return "ok"
            if kind == unreachable and struct.pack("!H", ident) in body[8:]:
                return "refused"
        return "timeout"


def probe() -> None:
    held: dict[str, socket.socket] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        op, timeout = cmd["op"], float(cmd.get("timeout", 1.5))
        if op == "tcp":
            result = _tcp(cmd["addr"], cmd["port"], timeout)
        elif op == "udp":
            result = _udp(cmd["addr"], cmd["port"], timeout)
        elif op == "icmp":
            result = _icmp(cmd["addr"], timeout)
        elif op == "open":
            s = socket.socket(_family(cmd["addr"]), socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect((cmd["addr"], cmd["port"]))
                result = "ok" if s.recv(16).startswith(b"ok") else "error:no-greeting"
                held[cmd["id"]] = s
            except OSError as exc:
                result = _classify(exc)
        else:  # send
            s = held[cmd["id"]]
            try:
                s.send(b"ping\n")
                result = "ok" if s.recv(16) == b"ping\n" else "error:bad-echo"
            except OSError as exc:
                result = _classify(exc)
        print(json.dumps({"result": result}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("listen")
    lp.add_argument("--tcp", default="")
    lp.add_argument("--udp", default="")
    lp.add_argument("--addrs", default="")
    sub.add_parser("probe")
    args = parser.parse_args()
    if args.cmd == "listen":
        listen([int(p) for p in args.tcp.split(",") if p], [int(p) for p in args.udp.split(",") if p],
               [a for a in args.addrs.split(",") if a])
    else:
        probe()


if __name__ == "__main__":
    main()
