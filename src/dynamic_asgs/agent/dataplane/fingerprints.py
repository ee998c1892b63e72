"""Chain fingerprints kept across agent restarts, so an edit made while the agent was down is found.

A fingerprint (:attr:`dynamic_asgs.iptables.saved.ChainInfo.fingerprint`) is a hash of
a chain's text as ``iptables-save`` prints it. The agent learns it from the first
whole-table read after it writes a chain; without this file a restarted agent would
learn whatever the table holds, an in-place edit included. The file maps, per IP
family, each chain to the content hash it was taken with (a container's, or a shared
chain's own) and the fingerprint; a kept fingerprint is used only for a chain that still
carries the same content hash.

The file lives on the cell's ephemeral disk: a recreated VM (new stemcell, new
iptables) starts without it and learns afresh. It is written atomically (temporary
file, rename), mode 0600; an unreadable or malformed file is logged and ignored,
never fatal.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from dynamic_asgs.lager import Logger

from .table import Applied, chain_digest

__all__ = ["FingerprintFile"]

Baseline = dict[str, tuple[str, str]]
_HEX = re.compile(r"^[0-9a-f]{16}$")
_MAX_BYTES = 64 << 20


class FingerprintFile:
    """Load and save the fingerprints of every family's written chains."""

    def __init__(self, path: str | Path, logger: Logger) -> None:
        self.path = Path(path)
        self._log = logger.session("fingerprints")

    def load(self) -> dict[int, Baseline]:
        """Per family, chain -> (content hash, fingerprint); empty when missing or unusable."""
        try:
            with self.path.open("rb") as f:
                raw = f.read(_MAX_BYTES + 1)
            if len(raw) > _MAX_BYTES:
                raise ValueError(f"larger than {_MAX_BYTES} bytes")
            doc = json.loads(raw)
            return {int(v): _baseline(chains) for v, chains in doc["families"].items() if v in ("4", "6")}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            self._log.error("fingerprints-unreadable", f"{self.path}: {exc}", {"effect": "learned afresh"})
            return {}

    def save(self, families: Mapping[int, Mapping[str, Applied]]) -> None:
        """Write the fingerprints of every container whose chains have them (atomically, 0600)."""
        doc = {"families": {str(v): {name: [chain_digest(name, a.digest), fp] for a in applied.values()
                                     if a.fingerprints for name, fp in a.fingerprints.items()}
                            for v, applied in families.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".fingerprints.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(doc, out, separators=(",", ":"))
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._log.error("fingerprints-not-saved", f"{self.path}: {exc}")


def _baseline(chains: object) -> Baseline:
    if not isinstance(chains, dict):
        raise TypeError("a family must map chains to [hash, fingerprint]")
    out: Baseline = {}
    for name, pair in chains.items():
        if (isinstance(name, str) and isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, str) and _HEX.match(x) for x in pair)):
            out[name] = (pair[0], pair[1])
    return out
