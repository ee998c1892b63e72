"""JSON line logs in the lager shape Cloud Foundry operators already parse.

Each line is one JSON object: ``timestamp`` (RFC 3339, UTC, nanoseconds),
``level`` (``debug``, ``info``, ``error``, ``fatal``), ``source`` (the daemon),
``message`` (``<source>.<session>.<event>``, events in kebab-case) and ``data``
(key/value pairs). Values under keys that name secrets are redacted before they
are written, so a careless call cannot leak a password or a token.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["LEVELS", "Logger", "parse_level"]

LEVELS: dict[str, int] = {"debug": 0, "info": 1, "error": 2, "fatal": 3}
_ALIASES = {"warn": "error", "warning": "error"}
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|private_key|client_key)", re.I)
_REDACTED = "*REDACTED*"


def parse_level(name: str) -> str:
    """Return the canonical level for ``name`` (``warn`` maps to ``error``, as in lager)."""
    level = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if level not in LEVELS:
        raise ValueError(f"unknown log level {name!r} (use one of debug, info, error, fatal)")
    return level


def _timestamp() -> str:
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _redact(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if _SECRET_KEY.search(key) and value not in (None, "", False):
            out[key] = _REDACTED
        elif isinstance(value, Mapping):
            out[key] = _redact(value)
        else:
            out[key] = value
    return out


class _Sink:
    def __init__(self, stream: TextIO, level: str) -> None:
        self.stream = stream
        self.level = level
        self.lock = threading.Lock()


class Logger:
    """A lager-style logger; :meth:`session` returns a child sharing sink and level."""

    def __init__(
        self, source: str, *, stream: TextIO | None = None, level: str = "info", _sink: _Sink | None = None,
        _prefix: str | None = None,
    ) -> None:
        self.source = source
        self._sink = _sink or _Sink(stream or sys.stdout, parse_level(level))
        self._prefix = _prefix if _prefix is not None else source

    @property
    def level(self) -> str:
        """The current minimum level (shared by every session of this logger)."""
        return self._sink.level

    @level.setter
    def level(self, name: str) -> None:
        self._sink.level = parse_level(name)

    def session(self, name: str) -> Logger:
        """A logger whose messages are prefixed with ``name``."""
        return Logger(self.source, _sink=self._sink, _prefix=f"{self._prefix}.{name}")

    def enabled(self, level: str) -> bool:
        """Whether a message at ``level`` would be written."""
        return LEVELS[level] >= LEVELS[self._sink.level]

    def debug(self, event: str, data: Mapping[str, Any] | None = None) -> None:
        self._write("debug", event, data, None)

    def info(self, event: str, data: Mapping[str, Any] | None = None) -> None:
        self._write("info", event, data, None)

    def error(
        self, event: str, error: BaseException | str | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        self._write("error", event, data, error)

    def fatal(
        self, event: str, error: BaseException | str | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        self._write("fatal", event, data, error)

    def _write(
        self, level: str, event: str, data: Mapping[str, Any] | None, error: BaseException | str | None
    ) -> None:
        if not self.enabled(level):
            return
        payload = _redact(data) if data else {}
        if error is not None:
            payload["error"] = str(error)
        line = json.dumps(
            {
                "timestamp": _timestamp(),
                "level": level,
                "source": self.source,
                "message": f"{self._prefix}.{event}",
                "data": payload,
            },
            default=str,
            separators=(",", ":"),
        )
        with self._sink.lock:
            self._sink.stream.write(line + "\n")
            self._sink.stream.flush()
