"""The only module that executes ``iptables-save`` and ``iptables-restore``.

Goals and the mechanism serving each:

* **Coexist with silk's CNI and netmon** — every save and restore holds ``flock``
  on the configured lock file (``/var/vcap/data/garden-cni/iptables.lock`` on a
  cell) with a bounded wait (:class:`~dynamic_asgs.errors.LockTimeout`), and
  restores pass ``-w <seconds>`` so the tools also wait, boundedly, for the
  xtables lock.
* **Any backend** — the binaries are configurable per family
  (:func:`commands_for`: what ``iptables-restore`` resolves to by default,
  ``iptables-legacy-restore`` or ``iptables-nft-restore``); an optional command
  prefix (``ip netns exec NS``) runs them inside a network namespace, for tests
  and the local environment.
* **A million rules in little memory** — a restore payload is streamed to the
  tool's stdin in chunks while it is generated (the payload is never held whole);
  ``iptables-save`` output is parsed as it streams (:mod:`.saved`).
* **Generation overlaps the tool's parsing** — chunks are small (256 lines, about
  32 KiB) and the pipe is widened to 1 MiB, so a write never waits for the tool
  to drain a chunk it is still parsing; with the default pipe and large chunks the
  two took turns (``bench/dataplane.py`` prints the cost beside a raw restore).
* **Errors at one boundary** — a tool that cannot run or fails becomes
  :class:`~dynamic_asgs.errors.IptablesError`; a refused payload becomes
  :class:`~dynamic_asgs.errors.RestoreError` with the failing line number and the
  numbered neighbouring lines (the payload is iterated a second time for them, so
  it must be re-iterable: a list, or an object whose ``__iter__`` regenerates).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from dynamic_asgs.errors import IptablesError, RestoreError
from dynamic_asgs.filelock import locked
from dynamic_asgs.iptables.counters import parse_final_rejects
from dynamic_asgs.iptables.saved import SavedTable, count_listing_lines, parse_chain_listing, parse_save

__all__ = ["BACKENDS", "IptablesRunner", "RestoreStats", "Runner", "commands_for", "error_context"]

#: Backends :func:`commands_for` knows; ``None`` means the system's default alternative.
BACKENDS = ("legacy", "nft")
_CHUNK = 256  # lines per write
_PIPE_SIZE = 1 << 20  # bytes; /proc/sys/fs/pipe-max-size binds only unprivileged processes
_LINE_RES = (re.compile(r"line (\d+) failed"), re.compile(r"Error occurred at line: (\d+)"))
#: How the tools say ``-S <chain>`` names no chain (legacy; nft 1.8.9 calls it "incompatible").
_NO_CHAIN = ("No chain/target/match by that name", "is incompatible, use 'nft' tool", "does not exist")
#: Up to this many chains are listed one by one (``-S``); more are read with one save.
_LISTED_ONE_BY_ONE = 4
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RestoreStats:
    """What one successful restore cost."""

    lines: int
    seconds: float
    lock_wait: float


class Runner(Protocol):
    """What the dataplane needs from iptables for one family (real: :class:`IptablesRunner`)."""

    @property
    def version(self) -> int: ...

    def save(self) -> SavedTable:
        """Read the filter table."""
        ...

    def restore(self, payload: Iterable[str]) -> RestoreStats:
        """Apply ``payload`` (a whole ``*filter`` ... ``COMMIT`` section) atomically, without flushing."""
        ...

    def read_chains(self, names: Collection[str]) -> SavedTable:
        """Read only ``names`` (absent ones are absent from the result)."""
        ...


def commands_for(version: int, backend: str | None = None) -> tuple[str, str]:
    """The (restore, save) binaries for ``version`` (4 or 6) and ``backend`` (``legacy``, ``nft``, ``None``)."""
    if version not in (4, 6):
        raise ValueError(f"IP version must be 4 or 6, not {version!r}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown iptables backend {backend!r} (use one of {', '.join(BACKENDS)})")
    base = ("ip6tables" if version == 6 else "iptables") + (f"-{backend}" if backend else "")
    return f"{base}-restore", f"{base}-save"


def error_context(payload: Iterable[str], line: int, radius: int = 2) -> str:
    """The numbered lines around ``line`` (1-based) of ``payload``, the failing one marked ``>``."""
    out = []
    for number, text in enumerate(payload, 1):
        if number > line + radius:
            break
        if number >= line - radius:
            out.append(f"{'>' if number == line else ' '}{number:6d}: {text}")
    return "\n".join(out)


def _reason(stderr: str) -> str:
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    keep = [x for x in lines if not x.startswith(("Try `", "Error occurred at line"))]
    return "; ".join(keep or lines) or "no error message"


def _failing_line(stderr: str) -> int | None:
    for pattern in _LINE_RES:
        found = pattern.search(stderr)
        if found:
            return int(found.group(1))
    return None


class IptablesRunner:
    """Runs one family's ``iptables-save``/``iptables-restore`` under the lock."""

    def __init__(
        self,
        *,
        version: int,
        restore_cmd: str,
        save_cmd: str,
        lock_file: str | Path,
        lock_timeout: float = 30.0,
        prefix: Sequence[str] = (),
        timeout: float = 3600.0,
    ) -> None:
        if version not in (4, 6):
            raise ValueError(f"IP version must be 4 or 6, not {version!r}")
        self._version = version
        self.restore_cmd = restore_cmd
        self.save_cmd = save_cmd
        self.lock_file = Path(lock_file)
        self.lock_timeout = lock_timeout
        self.prefix = tuple(prefix)
        self.timeout = timeout

    @property
    def version(self) -> int:
        return self._version

    def __repr__(self) -> str:
        return f"IptablesRunner(v{self._version}, {' '.join((*self.prefix, self.restore_cmd))})"

    def save(self) -> SavedTable:
        """Read and parse the filter table (under the lock)."""
        return self._stream_save(["-t", "filter"], parse_save)

    def final_reject_packets(self, prefix: str) -> dict[str, int]:
        """Per filter chain named ``prefix...``, the packets its final REJECT counted (one save, under the lock)."""
        return self._stream_save(["-c", "-t", "filter"], lambda lines: parse_final_rejects(lines, prefix))

    def _stream_save(self, args: list[str], parse: Callable[[Iterable[str]], _T]) -> _T:
        """Run ``<save> args`` under the lock and parse its output as it streams (then drain the rest)."""
        cmd = [*self.prefix, self.save_cmd, *args]
        with locked(self.lock_file, timeout=self.lock_timeout), tempfile.TemporaryFile() as err:
            proc = self._spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                               errors="replace", bufsize=1 << 16)
            assert proc.stdout is not None
            with _Watchdog(proc, self.timeout, cmd) as dog, proc.stdout as out:
                result = parse(out)
                for _ in out:  # drain: a parser may stop at COMMIT
                    pass
                status = dog.wait()
            if status != 0:
                raise IptablesError(f"{self.save_cmd} failed (exit {status}): {_reason(_read(err))}")
        return result

    def read_chains(self, names: Collection[str]) -> SavedTable:
        """Read only ``names``: ``<iptables> -S <chain>`` each, or one save when there are many.

        A targeted look costs a fraction of a whole-table read on nft and about one read on
        legacy; either way it is bounded by the few chains of containers being created.
        """
        lister = self._lister()
        if lister is None or len(names) > _LISTED_ONE_BY_ONE:
            full = self.save()
            wanted = set(names) & full.chains
            part = SavedTable(chains=wanted, info={n: full.info[n] for n in wanted if n in full.info})
            for target, refs in full.referrers.items():
                if refs & wanted:
                    part.referrers[target] = refs & wanted
            return part
        out = SavedTable()
        with locked(self.lock_file, timeout=self.lock_timeout):
            for name in names:
                cmd = [*self.prefix, lister, "-w", str(max(1, math.ceil(self.lock_timeout))), "-t", "filter",
                       "-S", name]
                proc = self._run(cmd)
                if proc.returncode != 0:
                    if any(marker in proc.stderr for marker in _NO_CHAIN):
                        continue
                    raise IptablesError(f"{lister} -S {name} failed (exit {proc.returncode}): {_reason(proc.stderr)}")
                one = parse_chain_listing(name, proc.stdout.splitlines())
                out.chains |= one.chains
                out.info.update(one.info)
                for target, refs in one.referrers.items():
                    out.referrers.setdefault(target, set()).update(refs)
        return out

    def _lister(self) -> str | None:
        """The listing tool beside the save tool (``iptables-nft-save`` -> ``iptables-nft``), if there is one."""
        if not self.save_cmd.endswith("-save"):
            return None
        name = self.save_cmd.removesuffix("-save")
        return name if shutil.which(name) else None

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise IptablesError(f"{' '.join(cmd)}: no answer within {self.timeout:g}s (killed)") from exc
        except OSError as exc:
            raise IptablesError(f"{cmd[0]}: cannot run: {exc.strerror or exc}") from exc

    def count_rules(self) -> dict[str, int]:
        """Per table, the lines ``iptables -t <table> -S`` would print, from one save of all tables (under the lock).

        netmon's count: one ``iptables-save`` read streamed through
        :func:`~dynamic_asgs.iptables.saved.count_listing_lines`, never a per-rule walk.
        """
        return self._stream_save([], count_listing_lines)

    def restore(self, payload: Iterable[str]) -> RestoreStats:
        """Stream ``payload`` into ``<restore> -w <s> --noflush`` (under the lock); raise on refusal."""
        wait = str(max(1, math.ceil(self.lock_timeout)))
        cmd = [*self.prefix, self.restore_cmd, "-w", wait, "--noflush"]
        with locked(self.lock_file, timeout=self.lock_timeout) as waited, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            proc = self._spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
            _widen(proc)
            with _Watchdog(proc, self.timeout, cmd) as dog:
                count = _feed(proc, payload)
                status = dog.wait()
            seconds = time.monotonic() - start
            if status != 0:
                stderr = _read(err)
                line = _failing_line(stderr)
                where = f" at line {line}" if line is not None else ""
                context = error_context(payload, line) if line is not None else ""
                raise RestoreError(f"{self.restore_cmd} refused the payload{where}: {_reason(stderr)}",
                                   line=line, context=context)
        return RestoreStats(lines=count, seconds=seconds, lock_wait=waited)

    def _spawn(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        try:
            return subprocess.Popen(cmd, **kw)
        except OSError as exc:
            raise IptablesError(f"{cmd[0]}: cannot run: {exc.strerror or exc}") from exc


class _Watchdog:
    """Kills a tool that has not finished within the bound (a pipe read or write never hangs the agent)."""

    def __init__(self, proc: subprocess.Popen[Any], seconds: float, cmd: list[str]) -> None:
        self._proc = proc
        self._cmd = cmd
        self._seconds = seconds
        self._fired = threading.Event()
        self._timer = threading.Timer(seconds, self._kill)
        self._timer.daemon = True

    def _kill(self) -> None:
        self._fired.set()
        self._proc.kill()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def wait(self) -> int:
        """The tool's exit status; IptablesError if the watchdog had to kill it."""
        status = self._proc.wait()
        if self._fired.is_set():
            raise IptablesError(f"{' '.join(self._cmd)}: no answer within {self._seconds:g}s (killed)")
        return status


def _widen(proc: subprocess.Popen[Any]) -> None:
    """Give the tool's stdin pipe room for several chunks (best effort: a smaller pipe only costs overlap)."""
    assert proc.stdin is not None
    with contextlib.suppress(OSError):
        fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _feed(proc: subprocess.Popen[Any], payload: Iterable[str]) -> int:
    """Write ``payload`` to the tool in chunks; stop quietly if it exits early (it reports why).

    If generating the payload fails (e.g. the renderer refuses a token), the tool is killed
    before its input ends, so it never sees an end of input and commits nothing.
    """
    stdin = proc.stdin
    assert stdin is not None
    count = 0
    chunk: list[str] = []
    try:
        for line in payload:
            chunk.append(line)
            if len(chunk) >= _CHUNK:
                stdin.write(("\n".join(chunk) + "\n").encode())
                count += len(chunk)
                chunk.clear()
        if chunk:
            stdin.write(("\n".join(chunk) + "\n").encode())
            count += len(chunk)
        stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
    return count


def _read(err: IO[bytes]) -> str:
    err.seek(0)
    return err.read().decode(errors="replace")
