"""Reaching a Service through the API server's service proxy with the user's kubeconfig.

`GET /api/v1/namespaces/<ns>/services/<scheme>:<name>:<port>/proxy/<path>` is authorised by
RBAC as `get` on `services/proxy`, so whoever may use it is decided by Kubernetes, not by a
second login on the controller. The resourceName RBAC compares is that path segment exactly
(`tote-controller:status`, not `tote-controller`): a rule must name it so. WebSocket upgrades pass
through the proxy too; `tote status` and `tote doctor` use it to reach the controller.
"""

from __future__ import annotations

import ssl
from urllib.parse import quote

import msgspec

from tote_core.kube.config import KubeConfig


def service_proxy_path(namespace: str, service: str, port: str, path: str,
                       *, scheme: str = "http") -> str:
    """The API path of `path` on `service:port` (port name or number) in `namespace`."""
    target = f"{scheme}:{service}:{port}" if scheme != "http" else f"{service}:{port}"
    return (f"/api/v1/namespaces/{quote(namespace, safe='')}/services/"
            f"{quote(target, safe=':')}/proxy/{path.lstrip('/')}")


def websocket_url(config: KubeConfig, api_path: str) -> str:
    """`wss://apiserver/<api_path>` (or `ws://` for a plain-HTTP API server)."""
    server = config.server
    if server.startswith("https://"):
        return "wss://" + server[len("https://"):] + api_path
    if server.startswith("http://"):
        return "ws://" + server[len("http://"):] + api_path
    raise ValueError(f"unsupported API server URL {server!r}")


def websocket_ssl(config: KubeConfig) -> ssl.SSLContext | None:
    ctx = config.ssl_context()
    return ctx if isinstance(ctx, ssl.SSLContext) else None


async def auth_headers(config: KubeConfig) -> list[tuple[bytes, bytes]]:
    token = await config.fresh_bearer()
    return [(b"authorization", f"Bearer {token}".encode())] if token else []


class _Status(msgspec.Struct):
    message: str = ""
    reason: str = ""


def rejection_text(status: int, body: bytes | None) -> str:
    """What the API server (or the backend) said when it refused the upgrade."""
    text = (body or b"").decode(errors="replace").strip()
    try:
        decoded = msgspec.json.decode(body or b"", type=_Status)
        text = decoded.message or text
    except msgspec.DecodeError:
        pass
    return f"HTTP {status}: {text[:300]}" if text else f"HTTP {status}"
