"""The container metadata store: written by the CNI plugin, read by the agent (DESIGN.md §3.4).

Format (silk's datastore, kept byte-compatible): ``store.json`` is a JSON object
handle -> ``{"handle", "ip", "ipv6"?, "metadata": {...}}``; ``store.json_version`` holds a
decimal counter that every write bumps; every reader and writer takes ``flock`` on
``store.json_lock``. Silk's writer overwrites the data file in place (hence the lock);
ours writes a temporary file and renames it, so even a reader that ignores the lock
never sees a torn file. Files are mode 0600.

Goals and the mechanism serving each (issue 13):

* **No symlink followed** — the lock, version and data files are opened with
  ``O_NOFOLLOW`` (:func:`~dynamic_asgs.filelock.open_nofollow`) and the temporary file
  is created exclusively; a link planted at any of them fails the read or write with a
  :class:`StoreError` before anything is written, and its target is never touched.
* **Any bytes, any JSON** — the reader bounds the bytes it reads (:data:`MAX_STORE_BYTES`)
  and turns every failure of the file as a whole (missing, too big, not UTF-8, not
  JSON, nested too deep, integers of thousands of digits, not an object) into
  :class:`StoreError`; an entry that is not a valid container (any shape, any value
  outside its grammar, a key that differs from its ``handle``) is a per-entry
  :class:`ValidationError`. Nothing else escapes, whatever the file holds. Duplicate
  keys: the last wins, as with Go's decoder (silk).

:class:`StoreView` is the agent's reader: it re-parses only when the version or the
file changed, keeps the last good view when the file is unusable, and drops and
reports (``store-entry-invalid``) each refused entry.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dynamic_asgs.asg.model import Container
from dynamic_asgs.asg.parse import parse_container
from dynamic_asgs.errors import StoreError, UnsafeFile, ValidationError
from dynamic_asgs.filelock import locked, open_nofollow
from dynamic_asgs.lager import Logger

__all__ = ["MAX_STORE_BYTES", "MetadataStore", "StoreView"]

Signature = tuple[int, int, int, int]
#: The most bytes of ``store.json`` read (a cell's store is some hundred KB); a bigger file is refused.
MAX_STORE_BYTES = 16 * 1024 * 1024
_MAX_VERSION_BYTES = 64
#: Newly refused entries logged one by one per read; more are counted in one line.
_INVALID_LOGGED = 10


def _read(path: Path, limit: int) -> bytes | None:
    """At most ``limit`` + 1 bytes of ``path`` (None when missing), never through a symbolic link."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except UnsafeFile as exc:
        raise StoreError(str(exc)) from exc
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read(limit + 1)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _decode_pool(data: bytes, path: Path | str) -> dict[str, Any]:
    """The store's top-level object from ``data``; :class:`StoreError` for any file that is not one."""
    if len(data) > MAX_STORE_BYTES:
        raise StoreError(f"{path}: larger than {MAX_STORE_BYTES} bytes: refused (at most that much is read)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path}: not UTF-8 (corrupt): byte {exc.start}") from exc
    if not text.strip():
        return {}
    try:
        pool = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON (torn or corrupt): line {exc.lineno} "
                         f"column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise StoreError(f"{path}: JSON nested too deeply: refused") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise StoreError(f"{path}: not usable JSON: {str(exc)[:120]}") from exc
    if not isinstance(pool, dict):
        raise StoreError(f"{path}: must be a JSON object of handle -> container, not a {type(pool).__name__}")
    return pool


class MetadataStore:
    """Read and write ``store.json`` with its version and lock files."""

    def __init__(self, path: str | Path, *, lock_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.version_path = Path(f"{self.path}_version")
        self.lock_path = Path(f"{self.path}_lock")
        self.lock_timeout = lock_timeout

    def version(self) -> int:
        """The store's version counter (1 when the file is missing or empty, as silk reads it)."""
        data = _read(self.version_path, _MAX_VERSION_BYTES) or b""
        text = data.strip()
        if not text:
            return 1
        if len(data) > _MAX_VERSION_BYTES or not text.isdigit():
            shown = text[:40].decode("utf-8", errors="replace")
            raise StoreError(f"{self.version_path}: {shown!r} is not a number")
        return int(text)

    def signature(self) -> Signature:
        """What changes whenever the store does: version, mtime, size, inode of the data file."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return (self.version(), -1, -1, -1)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        return (self.version(), st.st_mtime_ns, st.st_size, st.st_ino)

    def _decode(self) -> dict[str, Any]:
        data = _read(self.path, MAX_STORE_BYTES)
        if data is None:
            raise StoreError(f"{self.path}: missing")
        return _decode_pool(data, self.path)

    @contextmanager
    def _lock(self, *, shared: bool = False) -> Iterator[None]:
        try:
            with locked(self.lock_path, timeout=self.lock_timeout, shared=shared):
                yield
        except UnsafeFile as exc:
            raise StoreError(str(exc)) from exc

    def read_all(self) -> tuple[dict[str, Any], Signature]:
        """Every raw entry and the signature it was read at, under the store lock."""
        with self._lock(shared=True):
            return self._decode(), self.signature()

    def _write(self, pool: Mapping[str, Any]) -> None:
        try:
            version_fd = open_nofollow(self.version_path, os.O_RDWR | os.O_CREAT)
        except UnsafeFile as exc:
            raise StoreError(str(exc)) from exc
        except OSError as exc:
            raise StoreError(f"{self.version_path}: cannot write: {exc.strerror or exc}") from exc
        with os.fdopen(version_fd, "r+b") as version_file:
            version = self.version() + 1
            fd, tmp = tempfile.mkstemp(prefix=".store.", dir=self.path.parent)  # O_EXCL, 0600: never a link
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(pool, out, separators=(",", ":"))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)  # replaces a link at the path itself, never its target
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            version_file.truncate(0)
            version_file.write(str(version).encode())
            os.fchmod(version_file.fileno(), 0o600)

    def add(self, handle: str, ip: str, metadata: Mapping[str, Any], *, ipv6: str = "",
            check: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        """Add or replace a container entry.

        ``check`` is called with the current entries under the lock, before anything is
        written (the CNI refuses colliding chain names there: check and add are atomic).
        """
        entry: dict[str, Any] = {"handle": handle, "ip": ip, "metadata": dict(metadata)}
        if ipv6:
            entry["ipv6"] = ipv6
        parse_container(entry, handle=handle)  # refuse to store what the agent could not read
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            pool = self._decode() if os.path.lexists(self.path) else {}
            if check is not None:
                check(pool)
            pool[handle] = entry
            self._write(pool)

    def delete(self, handle: str) -> dict[str, Any] | None:
        """Remove a container entry; return it (None when it was not there). Idempotent."""
        if not os.path.lexists(self.path):
            return None
        with self._lock():
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
            current = self.store.signature()
            if self._signature is not None and current == self._signature:
                return False
            if not os.path.lexists(self.store.path) and not self.containers:
                self._signature, self.last_error = current, None  # a fresh cell: no container was ever recorded
                return False
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
        self._report(invalid)
        changed = containers != self.containers
        self.containers = containers
        return changed

    def _report(self, invalid: dict[str, str]) -> None:
        """Log each newly refused entry once (the first few by name, the rest counted)."""
        new = [handle for handle in invalid if handle not in self.invalid]
        for handle in new[:_INVALID_LOGGED]:
            self.log.error("store-entry-invalid", invalid[handle], {"handle": handle[:200]})
        if len(new) > _INVALID_LOGGED:
            self.log.error("store-entries-invalid-not-logged", f"{len(new) - _INVALID_LOGGED} more refused entries",
                           {"count": len(new) - _INVALID_LOGGED})
        self.invalid = invalid
