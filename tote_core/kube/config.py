"""Connection settings from a kubeconfig or the in-cluster service account.

The `kubernetes` package's loaders understand every kubeconfig variant (client certs,
tokens, exec plugins, in-cluster token rotation); tote borrows them and does its own I/O
on httpx so it can be async under trio. Tokens that expire (exec plugins, OIDC) are
refreshed through the same loader before they do (`tote_core/kube/credentials.py`).
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from tote_core.errors import ConfigError
from tote_core.kube.credentials import Credentials, Reload, strip_bearer

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubeConfig:
    """Everything needed to open an authenticated connection to the API server."""

    server: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    token: str | None
    token_file: str | None
    verify: bool
    namespace: str
    credentials: Credentials = field(default_factory=lambda: Credentials(None), compare=False)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if not self.verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def bearer(self) -> str | None:
        """Current token without refreshing; re-read from file so rotated tokens are seen."""
        return self.credentials.current()

    async def fresh_bearer(self) -> str | None:
        """Current token, refreshed first if it is about to expire (exec plugin, OIDC)."""
        return await self.credentials.token()


def _reloader(
    path: str | None, context: str = "",
) -> tuple[Reload, k8s_client.Configuration, dt.datetime | None]:
    """A kubeconfig loader kept for refreshing, the configuration it produced and the
    token's expiry (exec plugins' `expirationTimestamp`).

    Mirrors `kubernetes.config.load_kube_config` (same merge of $KUBECONFIG files, same
    write-back of refreshed OIDC tokens) but keeps the loader, so the credential source can
    be asked again later.
    """
    from kubernetes.config.kube_config import (
        KUBE_CONFIG_DEFAULT_LOCATION,
        KubeConfigLoader,
        KubeConfigMerger,
    )

    merger = KubeConfigMerger(path or KUBE_CONFIG_DEFAULT_LOCATION)
    if merger.config is None:
        raise k8s_config.ConfigException("Invalid kube-config file. No configuration found.")
    loader = KubeConfigLoader(config_dict=merger.config, config_persister=merger.save_changes,
                              active_context=context or None)
    cfg = k8s_client.Configuration()
    loader.load_and_set(cfg)
    expiry = getattr(loader, "expiry", None)

    def reload() -> tuple[str | None, dt.datetime | None]:
        fresh = k8s_client.Configuration()
        loader.load_and_set(fresh)
        auth = fresh.api_key.get("authorization") or fresh.api_key.get("BearerToken")
        expiry = getattr(loader, "expiry", None)
        return strip_bearer(auth), expiry if isinstance(expiry, dt.datetime) else None

    return reload, cfg, expiry if isinstance(expiry, dt.datetime) else None


def load(kubeconfig: str = "", context: str = "") -> KubeConfig:
    """Kubeconfig path → KubeConfig; empty → in-cluster if available, else default kubeconfig.
    `context` picks a kubeconfig context other than the current one (never in-cluster)."""
    cfg = k8s_client.Configuration()
    reload: Reload | None = None
    expiry: dt.datetime | None = None
    in_cluster = not kubeconfig and not context and (SA_DIR / "token").exists()
    namespace = "default"
    try:
        if in_cluster:
            k8s_config.load_incluster_config(client_configuration=cfg)
            ns_file = SA_DIR / "namespace"
            if ns_file.exists():
                namespace = ns_file.read_text().strip()
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG", "") or None
            reload, cfg, expiry = _reloader(path, context)
            try:
                contexts, active = k8s_config.list_kube_config_contexts(config_file=path)
                if context:
                    active = next(c for c in contexts if c.get("name") == context)
                namespace = active.get("context", {}).get("namespace") or "default"
            except Exception:
                namespace = "default"
    except (k8s_config.ConfigException, OSError, TypeError) as exc:
        raise ConfigError(f"cannot load Kubernetes configuration: {exc}") from exc
    token = strip_bearer(cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken"))
    token_file = str(SA_DIR / "token") if in_cluster else None
    ca_file = cfg.ssl_ca_cert
    if ca_file is None and not cfg.verify_ssl:
        ca_file = None
    return KubeConfig(
        server=cfg.host.rstrip("/"),
        ca_file=ca_file,
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        token=token,
        token_file=token_file,
        verify=bool(cfg.verify_ssl),
        namespace=namespace,
        # A kubeconfig is asked again when its token expires or is refused (exec plugins,
        # OIDC); in-cluster, the token file is re-read on every use instead.
        credentials=Credentials(token, expiry=expiry, reload=reload if token else None,
                                token_file=token_file),
    )

