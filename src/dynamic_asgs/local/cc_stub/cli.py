"""``dynamic-asgs cc-stub``: run the Cloud Controller + UAA stand-in until SIGTERM/SIGINT.

Example (certificates generated into a directory)::

    dynamic-asgs cc-stub --asgs src/dynamic_asgs/local/examples/asgs.yml --pki-dir /tmp/cc-pki \\
        --port 9022 --internal-port 9023 --control-port 9024

``--ports-file`` receives ``{"public": P, "internal": I, "control": C}`` once the servers
listen (use port 0 to let the kernel choose). With ``--pki-dir`` the directory gets
``cc-ca.crt``, ``cc-server.{crt,key}`` and ``cc-client.{crt,key}`` (the syncer's client
certificate for the internal port), unless they exist already.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

from dynamic_asgs.errors import ConfigError
from dynamic_asgs.lager import Logger
from dynamic_asgs.local.cc_stub.catalog import Catalog, load_catalog
from dynamic_asgs.local.cc_stub.server import FileWatcher, StubServer
from dynamic_asgs.local.cc_stub.state import StubState
from dynamic_asgs.local.pki import make_pki
from dynamic_asgs.signals import stop_on_signals
from dynamic_asgs.tls import server_context

__all__ = ["run"]


def _certificates(args: argparse.Namespace) -> tuple[str, str, str]:
    if args.pki_dir:
        directory = Path(args.pki_dir)
        if not (directory / "cc-server.crt").exists():
            make_pki(directory, name="cc")
        return str(directory / "cc-server.crt"), str(directory / "cc-server.key"), str(directory / "cc-ca.crt")
    if not (args.cert and args.key and args.ca):
        raise ConfigError("cc-stub: give --cert, --key and --ca, or --pki-dir")
    return args.cert, args.key, args.ca


def _write_ports(path: str, ports: dict[str, int]) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(ports))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """Serve until a signal; 2 on bad flags or an unreadable ASG file."""
    log = Logger("cc-stub", level=args.log_level)
    cert, key, ca = _certificates(args)
    secret = "network-policy-secret"
    if args.client_secret_file:
        try:
            secret = Path(args.client_secret_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cc-stub: --client-secret-file: {exc.strerror or exc}") from exc
    public = server_context(ca_file=None, cert_file=cert, key_file=key, require_client_cert=False,
                            what="cc-stub public TLS")
    internal = server_context(ca_file=ca, cert_file=cert, key_file=key, what="cc-stub internal mTLS")
    state = StubState(Catalog(()), client_id=args.client_id, client_secret=secret, token_ttl=args.token_ttl)
    try:
        server = StubServer(state, host=args.host, public=(args.port, public), internal=(args.internal_port, internal),
                            control_port=args.control_port, log=log)
    except OSError as exc:
        raise ConfigError(f"cc-stub: cannot listen: {exc.strerror or exc}") from exc
    state.catalog = load_catalog(args.asgs, base_url=server.base_url)
    watcher = FileWatcher(Path(args.asgs), state, base_url=server.base_url, log=log.session("watcher"))
    stop = threading.Event()
    stop_on_signals(stop)
    server.start()
    watcher.start()
    if args.ports_file:
        _write_ports(args.ports_file, server.ports)
    log.info("started", {**server.ports, "security_groups": len(state.catalog.groups),
                         "last_update": state.last_update})
    while not stop.wait(0.5):
        pass
    watcher.stop()
    server.stop()
    log.info("exited")
    return 0
