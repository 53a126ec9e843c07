"""Settings: command-line flags, environment and an optional config file → msgspec Structs.

Precedence, lowest to highest: defaults, config file (`--config`, YAML or JSON, keys as the
flag names without dashes, e.g. `max-concurrent-salvages` or `max_concurrent_salvages`),
environment (`TOTE_<FLAG>` with dashes as underscores, e.g. `TOTE_MAX_IMAGE_SIZE`), flags.
Every value is validated by msgspec after merging, so a bad value from any source produces
one clear `ConfigError` naming the setting, before anything starts.

Core's groups (the flags both programs share, the controller's) live here; a plugin's group
(e.g. the node agent's, in tote_containerd) subclasses `CommonSettings` beside the plugin and
carries the `--help` text of its own flags in a `FLAG_HELP` class variable.
"""

from __future__ import annotations

import os
import re
from typing import Literal

import msgspec

from tote_core.values import Duration, Size, check_address, check_positive

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


class CommonSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Flags both subcommands share."""

    log_format: LogFormat = "text"
    log_level: LogLevel = "info"
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    insecure: bool = False  # explicit opt-out of mTLS (loudly logged)

    def __post_init__(self) -> None:
        # A path that cannot be read is a start-up error, not a feature silently off later.
        # With --tls-issue-secrets the controller writes these files itself.
        if getattr(self, "tls_issue_secrets", ""):
            return
        for name in ("tls_cert", "tls_key", "tls_ca", "admission_tls_cert",
                     "admission_tls_key"):
            path = getattr(self, name, "")
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{name}: cannot read {path}")


class ControllerSettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """`tote controller` settings. Names follow the documented flags with dashes → underscores."""

    kubeconfig: str = ""  # empty: in-cluster, then ~/.kube/config
    enabled: bool = True
    deny_namespaces: list[str] = msgspec.field(default_factory=list)
    salvage_on_auth_failure: bool = False
    max_image_size: Size = 2147483648
    max_concurrent_salvages: int = 2
    workers: int = 16
    reconcile_timeout: Duration = 30.0
    transfer_timeout: Duration = 1800.0
    salvagerecord_ttl: Duration = 168 * 3600.0
    reap_interval: Duration = 600.0
    # Runtime kill switch: ConfigMap <namespace>/<name>, key `enabled`.
    config_map: str = "tote-config"
    namespace: str = ""  # the controller's own namespace; empty = from service account / default
    leader_election: bool = True
    lease_name: str = "tote-controller"
    lease_duration: Duration = 15.0
    renew_deadline: Duration = 10.0
    retry_period: Duration = 2.0
    identity: str = ""  # leader-election identity; empty = hostname + pid
    metrics_address: str = "0.0.0.0:8080"
    health_address: str = "0.0.0.0:8081"
    # Validating admission webhook: HTTPS on every replica; empty address = off.
    # Its own serving certificate: the API server verifies it against the webhook's
    # caBundle for the Service's DNS name, which the mTLS identities do not carry.
    admission_address: str = ""
    admission_tls_cert: str = ""
    admission_tls_key: str = ""
    # The controller as its release's CA: Secrets PREFIX-ca, PREFIX-{controller,agent}-tls
    # (and PREFIX-webhook-tls), renewed at two thirds of their lifetime; its own files are
    # written to --tls-cert/--tls-key/--tls-ca (and --admission-tls-cert/-key).
    tls_issue_secrets: str = ""
    tls_issue_validity: Duration = 90 * 86400.0
    admission_webhook_name: str = ""  # ValidatingWebhookConfiguration whose caBundle to keep
    status_address: str = "0.0.0.0:8082"  # WebSocket status feed (`tote status`), path /status
    plugins_disabled: list[str] = msgspec.field(default_factory=list)
    # Sources that discarded their compressed layers (EKS and other managed node images)
    # serve layers regenerated from their unpacked snapshots.
    snapshot_salvage: bool = True
    snapshot_salvage_strict: bool = False  # only regenerated layers that hash to diff IDs
    pin_salvaged_images: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_concurrent_salvages < 1:
            raise ValueError("max_concurrent_salvages must be at least 1")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        for name in ("metrics_address", "health_address"):
            check_address(name, getattr(self, name))
        for name in ("reconcile_timeout", "transfer_timeout",
                     "salvagerecord_ttl", "reap_interval", "lease_duration", "renew_deadline",
                     "retry_period"):
            check_positive(name, getattr(self, name))
        if self.max_image_size < 0:
            raise ValueError("--max-image-size must not be negative (0 = no limit)")
        # Leader election only works with lease-duration > renew-deadline > retry-period > 0
        # (a zero retry period spins a standby replica at full CPU).
        if not self.lease_duration > self.renew_deadline > self.retry_period:
            raise ValueError(
                "leader election needs --lease-duration > --renew-deadline > --retry-period "
                f"(got {self.lease_duration:g}s, {self.renew_deadline:g}s, "
                f"{self.retry_period:g}s)")
        if self.snapshot_salvage_strict and not self.snapshot_salvage:
            raise ValueError("--snapshot-salvage-strict needs --snapshot-salvage (it narrows "
                             "snapshot salvage to verified layers; false turns it off)")
        if self.admission_address:
            check_address("admission_address", self.admission_address)
            if not (self.admission_tls_cert and self.admission_tls_key):
                raise ValueError("--admission-address needs --admission-tls-cert and "
                                 "--admission-tls-key (the API server only calls HTTPS)")
        elif self.admission_tls_cert or self.admission_tls_key:
            raise ValueError("--admission-tls-cert/--admission-tls-key given without "
                             "--admission-address")
        self._check_issuer()

    def _check_issuer(self) -> None:
        """`--tls-issue-secrets` needs to know where to write and what to serve."""
        if not self.tls_issue_secrets:
            if self.admission_webhook_name:
                raise ValueError("--admission-webhook-name needs --tls-issue-secrets (it names "
                                 "the webhook whose caBundle the issuer keeps current)")
            return
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,200}[a-z0-9])?", self.tls_issue_secrets):
            raise ValueError(f"--tls-issue-secrets: {self.tls_issue_secrets!r} is not a valid "
                             "Secret name prefix (lower-case letters, digits and '-')")
        if self.insecure:
            raise ValueError("--tls-issue-secrets and --insecure exclude each other")
        if not (self.tls_cert and self.tls_key and self.tls_ca):
            raise ValueError("--tls-issue-secrets needs --tls-cert, --tls-key and --tls-ca: "
                             "the files the controller writes its own identity to")
        for name in ("tls_cert", "tls_key", "tls_ca", "admission_tls_cert",
                     "admission_tls_key"):
            path = getattr(self, name)
            if path and not os.access(os.path.dirname(path) or ".", os.W_OK):
                raise ValueError(f"{name}: cannot write {path} (--tls-issue-secrets writes "
                                 "it)")
        if self.admission_address and not self.admission_webhook_name:
            raise ValueError("--tls-issue-secrets with --admission-address needs "
                             "--admission-webhook-name (the webhook whose Service names the "
                             "certificate and whose caBundle trusts it)")
        if self.admission_webhook_name and not self.admission_address:
            raise ValueError("--admission-webhook-name needs --admission-address")
        if not 60 <= self.tls_issue_validity <= 10 * 365 * 86400:
            raise ValueError("--tls-issue-validity must be between 1m and 3650 days, got "
                             f"{self.tls_issue_validity:g}s")


# `--help` text per core setting (README has the same tables).
HELP: dict[str, str] = {
    "log_format": "text or json (default text)",
    "log_level": "debug, info, warning or error (default info)",
    "tls_cert": "PEM certificate for mTLS with agents",
    "tls_key": "PEM key for --tls-cert",
    "tls_ca": "PEM CA bundle that signed controller and agent identities",
    "insecure": "run without mTLS (loudly logged; agents refuse to start without it or TLS)",
    "kubeconfig": "kubeconfig path (default: in-cluster, then $KUBECONFIG, ~/.kube/config)",
    "enabled": ("kill switch's install-time default (default true); once `tote disable`/"
                "`tote enable` wrote ConfigMap --config-map key 'enabled', that decides"),
    "deny_namespaces": "comma list of namespaces never acted in",
    "salvage_on_auth_failure": "salvage even when the pull failed on 401/403 (default false)",
    "max_image_size": "max bytes to move per salvage, e.g. 2GB (default); 0 = no limit",
    "max_concurrent_salvages": "simultaneous transfers (default 2)",
    "workers": "detection reconcile workers (default 16)",
    "reconcile_timeout": "deadline per detection reconcile (default 30s)",
    "transfer_timeout": "deadline per transfer (default 30m)",
    "salvagerecord_ttl": "delete SalvageRecords older than this (default 168h)",
    "reap_interval": "how often the leader reaps SalvageRecords (default 10m)",
    "config_map": "runtime kill-switch ConfigMap name (default tote-config)",
    "namespace": "the controller's namespace (default: service account namespace)",
    "leader_election": "elect a leader among replicas (default true)",
    "lease_name": "Lease used for leader election (default tote-controller)",
    "lease_duration": "leader lease duration (default 15s)",
    "renew_deadline": "give up leadership if not renewed within this (default 10s)",
    "retry_period": "lease acquire/renew interval (default 2s)",
    "identity": "leader identity (default: pod name or hostname-pid)",
    "metrics_address": "host:port for /metrics (default 0.0.0.0:8080)",
    "health_address": "host:port for /healthz and /readyz (default 0.0.0.0:8081)",
    "admission_address": "host:port for the validating admission webhook (HTTPS, path "
                         "/validate; default off)",
    "admission_tls_cert": "PEM serving certificate for --admission-address",
    "admission_tls_key": "PEM key for --admission-tls-cert",
    "tls_issue_secrets": "act as the release's CA: issue and renew Secrets PREFIX-ca, "
                         "PREFIX-controller-tls, PREFIX-agent-tls (PREFIX-webhook-tls) and "
                         "write this controller's files (default off)",
    "tls_issue_validity": "lifetime of issued certificates, renewed at two thirds "
                          "(default 2160h)",
    "admission_webhook_name": "ValidatingWebhookConfiguration whose caBundle "
                              "--tls-issue-secrets keeps current",
    "status_address": "host:port of the WebSocket status feed, path /status (default "
                      "0.0.0.0:8082)",
    "plugins_disabled": "comma list of plugin names not to load",
    "snapshot_salvage": "salvage from nodes that discarded their compressed layers by "
                        "regenerating each layer from its unpacked snapshot (default true)",
    "snapshot_salvage_strict": "accept only regenerated layers whose bytes hash to the "
                               "image's diff IDs (default false: others are verified end "
                               "to end)",
    "pin_salvaged_images": "label salvaged images io.cri-containerd.pinned so kubelet's "
                           "image GC keeps them while the registry is down (default true)",
}
