"""The controller as the certificate authority of its release (`--tls-issue-secrets PREFIX`).

Keeps, in the controller's namespace:
- `PREFIX-ca`: the CA (tls.crt, tls.key) and the trust bundle (ca.crt: this CA and, while
  it is valid, the one before it). Mounted by no pod.
- `PREFIX-controller-tls`, `PREFIX-agent-tls`: the mTLS identities (tls.crt, tls.key,
  ca.crt), which the agent DaemonSet mounts; kubelet refreshes the mounted files and the
  agents reload them (`tote_core.tlsreload`).
- `PREFIX-webhook-tls` with `--admission-webhook-name`: the webhook's serving certificate for
  the DNS names of the Service the ValidatingWebhookConfiguration calls, whose caBundle is
  kept equal to the trust bundle.

Every replica runs the same reconcile, at start-up (before anything listens: the
controller's own files are written from it) and then periodically. Writes carry the
resourceVersion read, so two replicas renewing at once cannot both win: the loser reads the
winner's certificate and uses it. Nothing here depends on Helm re-rendering, so `helm
upgrade` and GitOps syncs neither rotate nor revert anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
from cryptography import x509

from tote_core import certs
from tote_core.errors import Conflict, KubeError, NotFound
from tote_core.kube.client import KubeClient

log = logging.getLogger("tote.certs")

CHECK_INTERVAL = 60.0
"""How often the Secrets are looked at (renewal is due long before expiry; this only bounds
how late a replica notices another replica's renewal or a deleted Secret)."""
RETRY_INTERVAL = 10.0
ROLES = ("controller", "agent")
ISSUER_LABELS = {"app.kubernetes.io/managed-by": "tote-controller",
                 "app.kubernetes.io/part-of": "tote"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: str | None) -> bytes:
    try:
        return base64.b64decode(value or "", validate=True)
    except ValueError:
        return b""


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    """Replace `path` in one rename, so a reader never sees half a file."""
    target = Path(path)
    try:
        if target.read_bytes() == data:
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def webhook_names(config: dict[str, Any], namespace: str) -> list[str]:
    """The names the API server dials for a ValidatingWebhookConfiguration: its Service's
    DNS names (the first is the one it verifies), or its URL's host."""
    for hook in config.get("webhooks") or []:
        client = hook.get("clientConfig") or {}
        svc = client.get("service") or {}
        if svc.get("name"):
            name, ns = svc["name"], svc.get("namespace") or namespace
            return [f"{name}.{ns}.svc", name, f"{name}.{ns}", f"{name}.{ns}.svc.cluster.local"]
        host = urlsplit(client.get("url") or "").hostname
        if host:
            return [host]
    return []


class CertIssuer:
    def __init__(self, kube: KubeClient, namespace: str, prefix: str, *,
                 validity: float, files: dict[str, tuple[str, str, str]],
                 webhook_config: str = "",
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        """`files`: role → (cert, key, ca) paths this process reads its own identity from
        ("controller", and "webhook" when it serves admission)."""
        self.kube = kube
        self.namespace = namespace
        self.prefix = prefix
        self.validity = dt.timedelta(seconds=validity)
        self.files = files
        self.webhook_config = webhook_config
        self.clock = clock

    def secret_name(self, role: str) -> str:
        return f"{self.prefix}-ca" if role == "ca" else f"{self.prefix}-{role}-tls"

    def _path(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{name}"

    async def _read(self, name: str) -> dict[str, Any] | None:
        try:
            secret: dict[str, Any] = await self.kube.get(self._path(name), dict)
        except NotFound:
            return None
        return secret

    async def _write(self, name: str, old: dict[str, Any] | None, data: dict[str, bytes],
                     why: str) -> None:
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": dict(ISSUER_LABELS)},
            "data": {k: _b64(v) for k, v in data.items()},
        }
        if old is None:
            await self.kube.create(f"/api/v1/namespaces/{self.namespace}/secrets", body)
        else:
            meta = old.get("metadata", {})
            body["metadata"]["resourceVersion"] = meta.get("resourceVersion", "")
            body["metadata"]["labels"] = {**meta.get("labels", {}), **ISSUER_LABELS}
            body["metadata"]["annotations"] = meta.get("annotations", {})
            await self.kube.update(self._path(name), body)
        log.info("issued Secret %s/%s (%s)", self.namespace, name, why)

    # -- reconcile --------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Make every Secret current and write this process's files from them. A write that
        lost a race (409) is followed by a fresh pass that reads the winner's."""
        for attempt in range(5):
            try:
                await self._reconcile_once()
                return
            except Conflict:
                if attempt == 4:
                    raise
                log.debug("certificate Secrets changed under us; reading them again")

    async def _reconcile_once(self) -> None:
        now = self.clock()
        ca, trust = await self._ensure_ca(now)
        ca_cert = x509.load_pem_x509_certificate(ca.cert)
        webhook: dict[str, Any] = await self.kube.get(self._webhook_path(), dict) \
            if self.webhook_config else {}
        dns = self._webhook_names(webhook) if "webhook" in self.files else []
        roles = [*ROLES, *(["webhook"] if "webhook" in self.files else [])]
        current: dict[str, tuple[bytes, bytes]] = {}
        for role in roles:
            name = self.secret_name(role)
            secret = await self._read(name)
            data = (secret or {}).get("data") or {}
            cert, key = _unb64(data.get("tls.crt")), _unb64(data.get("tls.key"))
            want_dns = dns if role == "webhook" else []
            problem = "missing" if secret is None else \
                certs.leaf_problem(cert, key, ca_cert, now, want_dns)
            if not problem and _unb64(data.get("ca.crt")) != trust:
                problem = "trust bundle changed"
            if problem:
                leaf = certs.issue(ca, role, now, self.validity, want_dns)
                cert, key = leaf.cert, leaf.key
                await self._write(name, secret, {"tls.crt": cert, "tls.key": key,
                                                 "ca.crt": trust}, problem)
            current[role] = (cert, key)
        for role, (cert_path, key_path, ca_path) in self.files.items():
            cert, key = current[role]
            # Key first: a reader that sees the new certificate finds its key already there.
            _write_atomically(key_path, key, 0o600)
            _write_atomically(cert_path, cert, 0o644)
            if ca_path:
                _write_atomically(ca_path, trust, 0o644)
        if self.webhook_config:
            await self._sync_ca_bundle(webhook, trust)

    async def _ensure_ca(self, now: dt.datetime) -> tuple[certs.Issued, bytes]:
        """The current CA and the trust bundle; a new CA when there is none (or it cannot
        be read) or two thirds of its life have passed."""
        name = self.secret_name("ca")
        secret = await self._read(name)
        data = (secret or {}).get("data") or {}
        cert_pem, key_pem = _unb64(data.get("tls.crt")), _unb64(data.get("tls.key"))
        previous: list[x509.Certificate] = []
        why = "missing" if secret is None else ""
        if not why:
            try:
                cert = x509.load_pem_x509_certificate(cert_pem)
                previous = x509.load_pem_x509_certificates(_unb64(data.get("ca.crt"))
                                                           or cert_pem)
            except ValueError as exc:
                why = f"unreadable ({exc})"
            else:
                if now >= certs.renewal_due(cert):
                    why = "renewal due"
                elif certs.bundle([cert, *previous], now) != _unb64(data.get("ca.crt")):
                    why = "trust bundle out of date"
                else:
                    return certs.Issued(cert_pem, key_pem), _unb64(data.get("ca.crt"))
        if why == "trust bundle out of date":
            ca = certs.Issued(cert_pem, key_pem)
        else:
            ca = certs.new_ca(f"tote-ca {self.namespace}/{self.prefix}", now)
        new_cert = x509.load_pem_x509_certificate(ca.cert)
        trust = certs.bundle([new_cert, *previous], now)
        await self._write(name, secret, {"tls.crt": ca.cert, "tls.key": ca.key,
                                         "ca.crt": trust}, f"CA: {why}")
        return ca, trust

    def _webhook_path(self) -> str:
        return ("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
                f"{self.webhook_config}")

    def _webhook_names(self, config: dict[str, Any]) -> list[str]:
        names = webhook_names(config, self.namespace)
        if not names:
            raise KubeError(f"ValidatingWebhookConfiguration {self.webhook_config} calls no "
                            "Service or URL: cannot tell which names its certificate needs")
        return names

    async def _sync_ca_bundle(self, config: dict[str, Any], trust: bytes) -> None:
        """`config` as read at the start of this pass: a change since makes the update a
        409 and the pass is repeated (`reconcile`)."""
        hooks = config.get("webhooks") or []
        want = _b64(trust)
        if all((h.get("clientConfig") or {}).get("caBundle") == want for h in hooks):
            return
        for hook in hooks:
            hook.setdefault("clientConfig", {})["caBundle"] = want
        await self.kube.update(self._webhook_path(), config)
        log.info("webhook %s: caBundle set to the current trust bundle", self.webhook_config)

    async def run(self) -> None:
        """Reconcile every CHECK_INTERVAL; failures are logged and retried sooner (the
        certificates in use stay valid for a third of their lifetime meanwhile)."""
        while True:
            try:
                await self.reconcile()
                delay = CHECK_INTERVAL
            except (KubeError, OSError, ValueError) as exc:
                log.warning("certificate issuer: %s (retrying in %.0fs)", exc, RETRY_INTERVAL)
                delay = RETRY_INTERVAL
            await trio.sleep(min(delay, self._seconds_to_next_renewal()))

    def _seconds_to_next_renewal(self) -> float:
        """Sleep no longer than until the earliest renewal among this process's files."""
        soonest = CHECK_INTERVAL
        for cert_path, _, _ in self.files.values():
            try:
                cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
            except (OSError, ValueError):
                return RETRY_INTERVAL
            due = (certs.renewal_due(cert) - self.clock()).total_seconds()
            soonest = min(soonest, max(1.0, due + 1.0))
        return soonest
