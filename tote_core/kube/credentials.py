"""Bearer tokens that expire: refreshed before they do, off the event loop.

Out of the cluster a kubeconfig may name an exec credential plugin (EKS, GKE, AKS, OIDC
helpers) or an OIDC auth-provider; both hand out tokens that expire, often within an hour.
The `kubernetes` package's `KubeConfigLoader` knows how to run the plugin again or redeem
the OIDC refresh token; this module decides *when*: shortly before the token expires
(`REFRESH_MARGIN`, at most a tenth of the token's lifetime), and once more after the API
server answers 401 (the token was revoked or the clock is off). The loader blocks (it runs a
subprocess or an HTTP call), so refreshing runs in a worker thread under a lock: many
concurrent requests trigger one refresh.

Expiry comes from the exec plugin's `expirationTimestamp`, else from the token itself when
it is a JWT (`exp`, e.g. OIDC id-tokens). Tokens without either never expire here; an
in-cluster service-account token file is re-read on every use instead (kubelet rotates it).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path

import trio

log = logging.getLogger("tote.kube")

REFRESH_MARGIN = 60.0  # seconds before expiry; capped at a tenth of the token's lifetime

# Returns (token, expiry) from the kubeconfig's credential source; blocking.
Reload = Callable[[], tuple[str | None, dt.datetime | None]]


def jwt_expiry(token: str) -> dt.datetime | None:
    """`exp` of a JWT, or None for tokens that are not JWTs or carry no `exp`."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = payload.get("exp") if isinstance(payload, dict) else None
        return dt.datetime.fromtimestamp(float(exp), tz=dt.UTC) if exp is not None else None
    except (ValueError, binascii.Error, TypeError, OverflowError):
        return None


def strip_bearer(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(" ", 1)[1] if value.lower().startswith("bearer ") else value


class Credentials:
    """The current bearer token; `await token()` refreshes it first when it is due."""

    def __init__(self, token: str | None, *, expiry: dt.datetime | None = None,
                 reload: Reload | None = None, token_file: str | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._clock = clock
        self._reload = reload
        self._token_file = token_file
        self._lock: trio.Lock | None = None
        self._set(token, expiry)

    def _set(self, token: str | None, expiry: dt.datetime | None) -> None:
        self._token = token
        self.expiry = expiry or (jwt_expiry(token) if token else None)
        self._obtained = self._clock()
        self._stale = False

    def due(self) -> bool:
        if self._reload is None:
            return False
        if self._stale:
            return True
        if self.expiry is None:
            return False
        lifetime = (self.expiry - self._obtained).total_seconds()
        margin = min(REFRESH_MARGIN, max(lifetime, 0.0) / 10)
        return self._clock() >= self.expiry - dt.timedelta(seconds=margin)

    def current(self) -> str | None:
        """The token as of now, without refreshing (files are re-read: kubelet rotates)."""
        if self._token_file:
            try:
                return Path(self._token_file).read_text().strip()
            except OSError:
                return self._token
        return self._token

    def refresh(self) -> None:
        """Ask the credential source again (blocking: runs the exec plugin / OIDC call)."""
        assert self._reload is not None
        token, expiry = self._reload()
        if not token:
            raise RuntimeError("the kubeconfig's credential source returned no token")
        self._set(token, expiry)
        log.debug("refreshed API credentials (expires %s)", self.expiry)

    async def token(self) -> str | None:
        if self.due():
            if self._lock is None:
                self._lock = trio.Lock()
            async with self._lock:
                if self.due():
                    await trio.to_thread.run_sync(self.refresh)
        return self.current()

    def invalidate(self) -> bool:
        """The API server refused the token (401): refresh before the next request.

        Returns whether a refresh is possible (so the caller retries once)."""
        if self._reload is None:
            return False
        self._stale = True
        return True
