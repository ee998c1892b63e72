"""What a raw-socket client reads back from an HTTP/1.1 server (tests that send malformed requests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Reply:
    status: int | None  # None: the server answered nothing parsable (or closed first)
    headers: dict[str, str]
    body: bytes
    closed: bool


def parse_reply(data: bytes, closed: bool) -> Reply:
    """Split ``data`` (as read) into status, lower-cased headers and body."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/1.1 ") else None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Reply(status, headers, body, closed)
