"""TLS material that follows its files, so a renewed certificate needs no restart.

Kubelet updates a mounted Secret in place (an atomic swap of the volume's `..data` link)
when cert-manager renews a certificate, an operator replaces the Secret, or tote's own
issuer rotates it (`tote_core.certs`). A process that loaded its certificate once would keep
serving the old one until it expired — and then fail every handshake.

`FileStamp` notices the change; `ServerContext` keeps one listening context whose
`sni_callback` hands every new handshake the newest context (certificate, key *and* CA: a
CA removed from the bundle is no longer trusted), so listeners (grpclib, trio, blocking
sockets) are never rebuilt; connections already open keep the identity they were opened
with. A renewed file that does not validate (half-written, wrong key, expired) is logged
and ignored: the last good material stays in use, so a bad renewal never takes a working
process down, and the next good one is picked up.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Sequence

from tote_core.errors import ConfigError

log = logging.getLogger("tote.tls")

RELOAD_INTERVAL = 5.0
"""How often the files are looked at (a stat each). Kubelet itself only refreshes a Secret
volume every sync period (about a minute), so checking more often buys nothing."""


Stamp = tuple[tuple[int, int, int], ...]


def file_stamp(paths: Sequence[str]) -> Stamp:
    """Identity of the files' current contents (inode, mtime, size): it differs after any
    replacement, including kubelet's swap of a Secret volume."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0))  # gone for a moment during a swap: look again later
            continue
        stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


class FileStamp:
    """Tells whether any of a set of files changed since the last look."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = tuple(p for p in paths if p)
        self._last = file_stamp(self.paths)

    def changed(self) -> bool:
        now = file_stamp(self.paths)
        if now == self._last:
            return False
        self._last = now
        return True


class ServerContext:
    """A server `SSLContext` (`front`, handed to the listener once) whose handshakes use the
    context `build()` made from the newest valid files."""

    def __init__(self, build: Callable[[], ssl.SSLContext], what: str) -> None:
        self._build = build
        self.what = what
        self.front = build()
        self.current = self.front
        self.front.sni_callback = self._pick

    def _pick(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
              context: ssl.SSLContext) -> None:
        # OpenSSL calls this for every ClientHello, with or without SNI; switching the
        # connection's context switches its certificate and its trust store.
        if self.current is not self.front:
            sslobj.context = self.current

    def reload(self) -> bool:
        """Rebuild from the files; False (old context kept, reason logged) if they do not
        load."""
        try:
            fresh = self._build()
        except (ConfigError, ssl.SSLError, OSError, ValueError) as exc:
            log.warning("%s: renewed TLS files not usable, keeping the current ones: %s",
                        self.what, exc)
            return False
        self.current = fresh
        return True
