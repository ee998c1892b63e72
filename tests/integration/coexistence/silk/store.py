"""silk's container metadata store writer (lib/datastore, lib/serial, filelock), byte for byte.

What cni-wrapper-plugin does to ``store.json`` on ADD (``store.Add``) and DEL (``store.Delete``),
so that the agent under test reads exactly what a cell running silk holds:

* the lock: ``store.json_lock`` (parent directories made 0700), opened O_RDWR|O_CREAT 0600 and
  ``flock(LOCK_EX)``, blocking with no timeout (filelock.Open); closing the file releases it;
* the data file, under the lock: opened O_RDWR|O_CREAT|O_APPEND 0600, the first JSON value
  decoded (empty file: no containers), then rewritten *in place*: seek 0, truncate to 0, one
  write of Go's ``json.Encoder`` output (map keys sorted, struct fields handle/ip/metadata in
  order, ``<>&`` and U+2028/U+2029 escaped, numbers as float64, a trailing newline). A reader
  that ignores the lock can see the empty file between truncate and write, as on a real cell;
* the version file ``store.json_version``: read (created empty; empty reads as 1), then
  replaced by ``str(version + 1)`` with no newline, still under the lock. DEL bumps it even when
  the handle was not in the store.

File ownership (``datastore_file_owner``/``group``) is not modelled: the tests run as root.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = ["SilkStore", "StoreFailure", "go_json", "go_locked"]

_HTML = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class StoreFailure(Exception):
    """What ``store.Add``/``store.Delete`` return as an error (same wording as silk's)."""


@contextmanager
def go_locked(path: Path) -> Iterator[None]:
    """code.cloudfoundry.org/filelock: MkdirAll 0700, open O_RDWR|O_CREAT 0600, blocking flock."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _go_string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    for char, escaped in _HTML.items():
        out = out.replace(char, escaped)
    return out


def _go_float(value: float) -> str:
    """encoding/json's float64 form: positional in [1e-6, 1e21), else exponent with e-7 (not e-07)."""
    if not math.isfinite(value):
        raise StoreFailure(f"json: unsupported value: {value}")
    magnitude = abs(value)
    if magnitude == 0 or 1e-6 <= magnitude < 1e21:
        return format(Decimal(repr(value)).normalize(), "f")
    text = repr(value)
    mantissa, exponent = text.split("e")
    if exponent.startswith("-0"):
        exponent = "-" + exponent[2:]
    return f"{mantissa.removesuffix('.0')}e{exponent}"


def go_json(value: Any) -> str:
    """``value`` as Go's encoding/json writes an ``interface{}`` decoded from JSON (no newline)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            return _go_float(float(value))
        except OverflowError:
            raise StoreFailure(f"json: cannot unmarshal number {value} into Go value of type float64") from None
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise StoreFailure("json: unsupported type: a map with non-string keys")
        return "{" + ",".join(f"{_go_string(k)}:{go_json(value[k])}" for k in sorted(value)) + "}"
    raise StoreFailure(f"json: unsupported type: {type(value).__name__}")


def _container(handle: str, raw: Any) -> dict[str, Any]:
    """An entry as Go decodes it into ``Container{Handle, IP, Metadata}`` (other keys are dropped)."""
    if raw is None:
        return {"handle": "", "ip": "", "metadata": None}
    if not isinstance(raw, dict):
        raise StoreFailure(f"decoding file: json: cannot unmarshal {type(raw).__name__} into Go value of "
                           "type datastore.Container")
    out: dict[str, Any] = {}
    for key, kind in (("handle", str), ("ip", str), ("metadata", dict)):
        value = raw.get(key)
        if value is not None and not isinstance(value, kind):
            raise StoreFailure(f"decoding file: json: cannot unmarshal {type(value).__name__} into Go struct "
                               f"field Container.{key} of {handle!r}")
        out[key] = value if value is not None or key == "metadata" else ""
    return out


def _encode_pool(pool: Mapping[str, Mapping[str, Any]]) -> bytes:
    body = ",".join(f"{_go_string(h)}:{{\"handle\":{_go_string(c['handle'])},\"ip\":{_go_string(c['ip'])},"
                    f"\"metadata\":{go_json(c['metadata'])}}}" for h, c in sorted(pool.items()))
    return ("{" + body + "}\n").encode()


class SilkStore:
    """``store.json`` with ``store.json_lock`` and ``store.json_version``, written as silk writes them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = Path(f"{self.path}_lock")
        self.version_path = Path(f"{self.path}_version")

    def add(self, handle: str, ip: str, metadata: Mapping[str, Any] | None) -> None:
        """``store.Add``: insert or replace ``handle``'s entry, bump the version."""
        if not handle:
            raise StoreFailure("invalid handle")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise StoreFailure(f"invalid ip: {ip}") from None
        go_json(metadata)  # unencodable metadata fails before the file is touched
        entry = {"handle": handle, "ip": ip, "metadata": metadata}
        with go_locked(self.lock_path), self._data() as fd:
            pool = self._decode(fd)
            pool[handle] = entry
            self._overwrite(fd, pool)
            self._bump_version()

    def delete(self, handle: str) -> dict[str, Any]:
        """``store.Delete``: remove ``handle`` (absent: a zero entry), rewrite, bump the version."""
        if not handle:
            raise StoreFailure("invalid handle")
        with go_locked(self.lock_path), self._data() as fd:
            pool = self._decode(fd)
            deleted = pool.pop(handle, {"handle": "", "ip": "", "metadata": None})
            self._overwrite(fd, pool)
            self._bump_version()
        return deleted

    def entries(self) -> dict[str, Any]:
        """What the data file holds now (no lock: for assertions)."""
        text = self.path.read_text() if self.path.exists() else ""
        return dict(json.loads(text)) if text.strip() else {}

    @contextmanager
    def _data(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            yield fd
        finally:
            os.close(fd)

    def _decode(self, fd: int) -> dict[str, dict[str, Any]]:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", errors="replace").lstrip(" \t\r\n")
        if not text:
            return {}
        try:
            raw, _ = json.JSONDecoder().raw_decode(text)  # json.Decoder.Decode: the first value only
        except json.JSONDecodeError as exc:
            raise StoreFailure(f"decoding file: {exc.msg} at offset {exc.pos}") from exc
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise StoreFailure(f"decoding file: json: cannot unmarshal {type(raw).__name__} into Go value of "
                               "type map[string]datastore.Container")
        return {handle: _container(handle, entry) for handle, entry in raw.items()}

    @staticmethod
    def _overwrite(fd: int, pool: Mapping[str, Mapping[str, Any]]) -> None:
        data = _encode_pool(pool)
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _bump_version(self) -> None:
        fd = os.open(self.version_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            text = os.read(fd, 64).decode("utf-8", errors="replace")
        finally:
            os.close(fd)
        version = 1
        if text:
            if not re.fullmatch(r"[+-]?[0-9]+", text):  # strconv.Atoi: no spaces, no newline
                raise StoreFailure(f"version file: '{text}' is not a number")
            version = int(text)
        fd = os.open(self.version_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, str(version + 1).encode())
        finally:
            os.close(fd)
