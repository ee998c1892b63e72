"""The container metadata store: written by the CNI plugin, read by the agent (DESIGN.md §3.4).

Format (silk's datastore, kept byte-compatible): ``store.json`` is a JSON object
handle -> ``{"handle", "ip", "ipv6"?, "metadata": {...}}``; ``store.json_version`` holds a
decimal counter that every write bumps; every reader and writer takes ``flock`` on
``store.json_lock``. Silk's writer overwrites the data file in place (hence the lock);
ours writes a temporary file and renames it, so even a reader that ignores the lock
never sees a torn file. Files are mode 0600.

:class:`StoreView` is the agent's reader: it re-parses only when the version or the
file changed, and keeps the last good view when the file is missing, torn or garbage.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dynamic_asgs.asg.model import Container
from dynamic_asgs.asg.parse import parse_container
from dynamic_asgs.errors import StoreError, ValidationError
from dynamic_asgs.filelock import locked
from dynamic_asgs.lager import Logger

__all__ = ["MetadataStore", "StoreView"]

Signature = tuple[int, int, int, int]


class MetadataStore:
    """Read and write ``store.json`` with its version and lock files."""

    def __init__(self, path: str | Path, *, lock_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.version_path = Path(f"{self.path}_version")
        self.lock_path = Path(f"{self.path}_lock")
        self.lock_timeout = lock_timeout

    def version(self) -> int:
        """The store's version counter (1 when the file is missing or empty, as silk reads it)."""
        try:
            text = self.version_path.read_text().strip()
        except FileNotFoundError:
            return 1
        except OSError as exc:
            raise StoreError(f"{self.version_path}: cannot read: {exc.strerror}") from exc
        if not text:
            return 1
        if not text.isdigit():
            raise StoreError(f"{self.version_path}: {text[:40]!r} is not a number")
        return int(text)

    def signature(self) -> Signature:
        """What changes whenever the store does: version, mtime, size, inode of the data file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (self.version(), -1, -1, -1)
        return (self.version(), st.st_mtime_ns, st.st_size, st.st_ino)

    def _decode(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise StoreError(f"{self.path}: missing") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.path}: cannot read: {exc}") from exc
        if not text.strip():
            return {}
        try:
            pool = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(f"{self.path}: not valid JSON (torn or corrupt): line {exc.lineno} "
                             f"column {exc.colno}: {exc.msg}") from exc
        if not isinstance(pool, dict):
            raise StoreError(f"{self.path}: must be a JSON object of handle -> container")
        return pool

    def read_all(self) -> tuple[dict[str, Any], Signature]:
        """Every raw entry and the signature it was read at, under the store lock."""
        with locked(self.lock_path, timeout=self.lock_timeout, shared=True):
            return self._decode(), self.signature()

    def _write(self, pool: Mapping[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".store.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(pool, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        version = self.version() + 1
        self.version_path.write_text(str(version))
        os.chmod(self.version_path, 0o600)

    def add(self, handle: str, ip: str, metadata: Mapping[str, Any], *, ipv6: str = "") -> None:
        """Add or replace a container entry."""
        entry: dict[str, Any] = {"handle": handle, "ip": ip, "metadata": dict(metadata)}
        if ipv6:
            entry["ipv6"] = ipv6
        parse_container(entry)  # refuse to store what the agent could not read
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.lock_path, timeout=self.lock_timeout):
            pool = self._decode() if self.path.exists() else {}
            pool[handle] = entry
            self._write(pool)

    def delete(self, handle: str) -> dict[str, Any] | None:
        """Remove a container entry; return it (None when it was not there). Idempotent."""
        if not self.path.exists():
            return None
        with locked(self.lock_path, timeout=self.lock_timeout):
            pool = self._decode()
            entry: dict[str, Any] | None = pool.pop(handle, None)
            if entry is not None:
                self._write(pool)
            return entry


class StoreView:
    """The agent's view of the store: parsed containers, kept through bad reads."""

    def __init__(self, store: MetadataStore, logger: Logger) -> None:
        self.store = store
        self.log = logger.session("store")
        self.containers: dict[str, Container] = {}
        self.invalid: dict[str, str] = {}
        self.last_error: str | None = None
        self.errors = 0
        self._signature: Signature | None = None

    @property
    def signature(self) -> Signature | None:
        """The store signature the view was last read at (None before the first read)."""
        return self._signature

    def refresh(self) -> bool:
        """Re-read the store if it changed; return whether the view changed.

        On a missing, torn or corrupt store the last good view stays and the
        error is logged (once per distinct error) and counted.
        """
        try:
            if self._signature is not None and self.store.signature() == self._signature:
                return False
            if not self.store.path.exists() and not self.containers:
                return False  # a fresh cell: no container was ever recorded
            raw, signature = self.store.read_all()
            if not raw and self.containers and signature[2] == 0:
                # Writers store "{}" when the last container goes; a 0-byte file is one cut short
                # after truncating (silk's writer rewrites in place): no evidence of "no containers".
                raise StoreError(f"{self.store.path}: empty (torn write?) while {len(self.containers)} "
                                 "containers were recorded")
        except StoreError as exc:
            self.errors += 1
            if str(exc) != self.last_error:
                self.log.error("store-unreadable-keeping-last-view", exc,
                               {"containers_kept": len(self.containers)})
            self.last_error = str(exc)
            return False
        self.last_error = None
        self._signature = signature
        containers: dict[str, Container] = {}
        invalid: dict[str, str] = {}
        for handle, entry in raw.items():
            try:
                containers[handle] = parse_container(entry, handle=handle)
            except ValidationError as exc:
                invalid[handle] = str(exc)
        for handle in invalid.keys() - self.invalid.keys():
            self.log.error("store-entry-invalid", invalid[handle], {"handle": handle})
        self.invalid = invalid
        changed = containers != self.containers
        self.containers = containers
        return changed
