"""``dynamic-asgs-cni``: the executable a container runtime calls (composition root).

:func:`run` reads the ``CNI_*`` environment and the configuration from stdin,
dispatches the command and writes the result, or the CNI error JSON, on stdout;
it returns the exit status (0, or 1 on error) and never lets a traceback out.
Logs (lager JSON lines) go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from dynamic_asgs.cni.agent_client import AgentClient
from dynamic_asgs.cni.plugin import Plugin, cni_errors
from dynamic_asgs.cni.protocol import (
    SPEC_VERSION,
    CniError,
    Code,
    decode_config,
    read_invocation,
    request_version,
    version_result,
)
from dynamic_asgs.cni.settings import CniSettings, load_settings
from dynamic_asgs.iptables.runner import IptablesRunner, Runner
from dynamic_asgs.lager import Logger
from dynamic_asgs.metadata_store import MetadataStore

__all__ = ["PluginFactory", "build_plugin", "main", "run"]

SOURCE = "cfnetworking.dynamic-asgs-cni"
PluginFactory = Callable[[CniSettings, Logger], Plugin]


def build_plugin(settings: CniSettings, logger: Logger) -> Plugin:
    """The real plugin: iptables runners per family, the store on disk, the agent over HTTP."""
    runners: dict[int, Runner] = {
        v: IptablesRunner(version=v, restore_cmd=settings.commands[v][0], save_cmd=settings.commands[v][1],
                          lock_file=settings.lock_file, lock_timeout=settings.lock_timeout, timeout=300)
        for v in settings.versions
    }
    return Plugin(settings=settings, runners=runners, store=MetadataStore(settings.store_path),
                  agent=AgentClient(settings.agent_address, timeout=settings.agent_timeout), logger=logger)


def _dispatch(environ: Mapping[str, str], stdin: bytes, build: PluginFactory, logger: Logger,
              version: list[str]) -> dict[str, Any] | None:
    invocation = read_invocation(environ)
    raw = decode_config(stdin) if stdin.strip() or invocation.command != "VERSION" else {}
    version[0] = request_version(raw)
    if invocation.command == "VERSION":
        return version_result(version[0])
    with cni_errors("invalid network configuration"):
        plugin = build(load_settings(raw), logger)
    handle = invocation.container_id
    if invocation.command == "ADD":
        return plugin.add(handle, raw)
    if invocation.command == "DEL":
        plugin.delete(handle, raw)
    else:
        plugin.check(handle, raw)
    return None


def run(environ: Mapping[str, str], stdin: bytes, out: TextIO, *, build: PluginFactory = build_plugin,
        err: TextIO | None = None) -> int:
    """One invocation: result or error JSON on ``out``; returns the exit status."""
    logger = Logger(SOURCE, stream=err if err is not None else sys.stderr)
    version = [SPEC_VERSION]
    try:
        result = _dispatch(environ, stdin, build, logger, version)
    except CniError as exc:
        document = exc.document(version[0])
        status = 1
    except Exception as exc:  # a bug must still answer in the protocol's terms
        document = CniError(Code.INTERNAL, "internal error", f"{type(exc).__name__}: {exc}").document(version[0])
        status = 1
    else:
        if result is None:
            return 0
        document, status = result, 0
    out.write(json.dumps(document) + "\n")
    out.flush()
    return status


def main() -> None:
    """Console entry point."""
    sys.exit(run(os.environ, sys.stdin.buffer.read(), sys.stdout))
