"""TLS contexts shared by every component, and a ``requests`` adapter that uses them.

Goals and mechanisms:

* **Mutual TLS servers** (policy server, CC stand-in's internal port): :func:`server_context`
  requires a client certificate signed by the configured CA and refuses anything below
  TLS 1.2.
* **Clients** (syncer -> CC/UAA, agent -> policy server): :func:`client_context` trusts only
  the configured CA (never the system store once a CA is given), presents a client
  certificate when one is configured, checks the host name, and supports the operator's
  explicit ``skip_ssl_validation`` switch.
* **requests** cannot take an ``SSLContext`` directly, and its default certificate
  handling would add the certifi bundle to ours; :func:`session_for` mounts an adapter
  that hands our context to urllib3 untouched.

Unreadable or mismatched certificate files become :class:`~dynamic_asgs.errors.ConfigError`
naming the file.
"""

from __future__ import annotations

import ssl
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from dynamic_asgs.errors import ConfigError

__all__ = ["ContextAdapter", "client_context", "server_context", "session_for"]


def _load_chain(context: ssl.SSLContext, cert_file: str, key_file: str, what: str) -> None:
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what}: cannot read {exc.filename or cert_file}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: cannot load certificate {cert_file} with key {key_file}: {exc}") from exc


def _load_ca(context: ssl.SSLContext, ca_file: str, what: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what}: cannot read CA file {ca_file}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what}: cannot load CA file {ca_file}: {exc}") from exc


def server_context(
    *, ca_file: str | None, cert_file: str, key_file: str, require_client_cert: bool = True,
    what: str = "server TLS",
) -> ssl.SSLContext:
    """A TLS 1.2+ server context; by default it requires a client certificate signed by ``ca_file``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: agents and syncers open fresh connections without resuming,
    # so the tickets would only cost a signature and a write per handshake.
    context.num_tickets = 0
    _load_chain(context, cert_file, key_file, what)
    if require_client_cert:
        if not ca_file:
            raise ConfigError(f"{what}: verifying client certificates needs a CA file")
        context.verify_mode = ssl.CERT_REQUIRED
        _load_ca(context, ca_file, what)
    return context


def client_context(
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    skip_verify: bool = False,
    what: str = "client TLS",
) -> ssl.SSLContext:
    """A TLS 1.2+ client context.

    With ``ca_file`` only that CA is trusted; without it, the system store. ``cert_file``
    and ``key_file`` add a client certificate (mutual TLS). ``skip_verify`` turns off
    certificate and host name checks (the operator's ``skip_ssl_validation``).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file:
        _load_ca(context, ca_file, what)
    else:
        context.load_default_certs()
    if cert_file or key_file:
        if not (cert_file and key_file):
            raise ConfigError(f"{what}: a client certificate needs both a certificate and a key file")
        _load_chain(context, cert_file, key_file, what)
    return context


class ContextAdapter(HTTPAdapter):
    """A ``requests`` transport adapter that uses exactly the given ``SSLContext``."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(connections, maxsize, block=block, **kwargs)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[Any, Any]:
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        required = self._context.verify_mode == ssl.CERT_REQUIRED
        return host_params, {"ssl_context": self._context, "cert_reqs": "CERT_REQUIRED" if required else "CERT_NONE"}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Leave verification to the context (requests would add the certifi bundle)."""


def session_for(context: ssl.SSLContext, *, pool_maxsize: int = 4) -> requests.Session:
    """A ``requests.Session`` whose HTTPS connections use ``context``."""
    session = requests.Session()
    session.trust_env = False  # no proxies or netrc from the environment for internal APIs
    session.mount("https://", ContextAdapter(context, pool_maxsize=pool_maxsize))
    if context.verify_mode == ssl.CERT_NONE:
        # The operator chose skip_ssl_validation; the daemon logs that once at start.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return session
