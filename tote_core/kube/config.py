"""Connection settings from a kubeconfig or the in-cluster service account.

The `kubernetes` package's loaders understand every kubeconfig variant (client certs,
tokens, exec plugins, in-cluster token rotation); tote borrows them and does its own I/O
on httpx so it can be async under trio.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from tote_core.errors import ConfigError

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
        """Current token; re-read from file each time so rotated tokens are picked up."""
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError:
                return self.token
        return self.token


def load(kubeconfig: str = "") -> KubeConfig:
    """Kubeconfig path → KubeConfig; empty → in-cluster if available, else default kubeconfig."""
    cfg = k8s_client.Configuration()
    in_cluster = not kubeconfig and (SA_DIR / "token").exists()
    namespace = "default"
    try:
        if in_cluster:
            k8s_config.load_incluster_config(client_configuration=cfg)
            ns_file = SA_DIR / "namespace"
            if ns_file.exists():
                namespace = ns_file.read_text().strip()
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG", "") or None
            k8s_config.load_kube_config(config_file=path, client_configuration=cfg)
            try:
                _, active = k8s_config.list_kube_config_contexts(config_file=path)
                namespace = active.get("context", {}).get("namespace") or "default"
            except Exception:
                namespace = "default"
    except (k8s_config.ConfigException, OSError, TypeError) as exc:
        raise ConfigError(f"cannot load Kubernetes configuration: {exc}") from exc
    token = None
    auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    if auth:
        token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
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
    )


