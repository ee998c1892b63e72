"""UAA client-credentials tokens, cached until shortly before they expire.

The syncer needs a token for Cloud Controller's v3 API. The Go syncer fetches a new one
for every sync; here one token is reused until ``expires_in`` minus a margin (a tenth of
its lifetime, at most 60 s), so a quiet poll costs no UAA round trip. A 401 from Cloud
Controller calls :meth:`TokenSource.invalidate` and the next call fetches a fresh one.
A token answer is read up to :data:`MAX_TOKEN_BYTES` and within the caller's deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dynamic_asgs.config import load_schema
from dynamic_asgs.http.client import JsonHttp, validator
from dynamic_asgs.http.deadline import Deadline

__all__ = ["MAX_TOKEN_BYTES", "TokenSource"]

#: A token answer is a JWT and a few fields, a few KiB even with many scopes.
MAX_TOKEN_BYTES = 1024 * 1024

_SCHEMA = validator(load_schema("dynamic_asgs.cc", "schemas/uaa_token.json"))


class TokenSource:
    """Fetches and caches a client-credentials token from ``POST {uaa}/oauth/token``."""

    def __init__(
        self, http: JsonHttp, *, client_id: str, client_secret: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._auth = (client_id, client_secret)
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._refresh_at = 0.0
        self.fetches = 0

    def token(self, *, deadline: Deadline | None = None) -> str:
        """A valid access token (from the cache unless it is about to expire; fetched by ``deadline``)."""
        with self._lock:
            if self._token and self._clock() < self._refresh_at:
                return self._token
            reply = self._http.request(
                "POST", "/oauth/token", schema=_SCHEMA, endpoint="/oauth/token",
                data={"grant_type": "client_credentials", "response_type": "token"},
                auth=self._auth, headers={"Accept": "application/json"}, max_bytes=MAX_TOKEN_BYTES,
                deadline=deadline,
            )
            lifetime = int(reply.body["expires_in"])
            self._token = str(reply.body["access_token"])
            self._refresh_at = self._clock() + lifetime - min(60.0, lifetime / 10)
            self.fetches += 1
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (Cloud Controller refused it)."""
        with self._lock:
            self._token = ""
            self._refresh_at = 0.0
