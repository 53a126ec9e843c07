"""`tote agent` settings: the node agent's flags, loaded by core's settings loader.

They live beside the agent rather than in tote_core/settings.py because the controller never
reads them; core keeps the loader and the flags both programs share (`CommonSettings`).
"""

from __future__ import annotations

from typing import ClassVar

from tote_core.settings import CommonSettings
from tote_core.values import check_port


class AgentSettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """`tote agent` settings."""

    containerd_socket: str = "/run/containerd/containerd.sock"
    containerd_namespace: str = "k8s.io"
    node_name: str = ""  # defaults to $NODE_NAME, then the hostname
    listen_address: str = "0.0.0.0"
    grpc_port: int = 9090
    metrics_port: int = 9091  # plaintext HTTP: /metrics and /healthz (probes, no client cert)
    # containerd's content directory as the agent sees it (hostPath); empty = ask containerd
    # (introspection). Used by the fast path when readable and writable.
    content_root: str = ""
    fast_path: bool = True  # read/write blob files directly (verified); API path otherwise
    platform: str = ""  # os/arch[/variant] to import; empty = this node's platform
    transfer_parallelism: int = 4  # blobs fetched in parallel per import
    data_port: int = 9092  # bulk blob channel for the fast path (mTLS, sessions); 0 = off

    # `--help` text of the agent's own flags (README has the same table); core's loader
    # adds it to the text of the shared flags.
    FLAG_HELP: ClassVar[dict[str, str]] = {
        "containerd_socket": "containerd gRPC socket (default /run/containerd/containerd.sock)",
        "containerd_namespace": "containerd namespace (default k8s.io)",
        "node_name": "node this agent serves (default $NODE_NAME, then hostname)",
        "listen_address": "address the agent listens on (default 0.0.0.0)",
        "grpc_port": "agent gRPC API port (default 9090)",
        "metrics_port": "plain HTTP /metrics and /healthz (default 9091)",
        "content_root": "containerd content directory for the fast path "
                        "(default: ask containerd)",
        "fast_path": "read/write verified blob files directly (default true)",
        "platform": "os/arch[/variant] to import (default: this node's)",
        "transfer_parallelism": "blobs fetched in parallel per import (default 4)",
        "data_port": "fast-path bulk data port (default 9092; 0 = off)",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        check_port("grpc_port", self.grpc_port)
        check_port("metrics_port", self.metrics_port)
        check_port("data_port", self.data_port, zero_means="fast-path data channel off")
        if self.transfer_parallelism < 1:
            raise ValueError("--transfer-parallelism must be at least 1")
