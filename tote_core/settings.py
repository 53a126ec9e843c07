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

import argparse
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

import msgspec
import yaml

from tote_core.detect import reference
from tote_core.errors import ConfigError, InvalidReference

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

# Binary throughout: the documented `2GB` default is 2147483648 bytes, so GB means GiB here.
_SIZE_UNITS = {"": 1, "b": 1} | {
    unit: 1024**power
    for power, letter in enumerate("kmgt", start=1)
    for unit in (letter, letter + "b", letter + "i", letter + "ib")
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str | int) -> int:
    """Parse `2GB`, `500Mi`, `0`, `2147483648` into bytes.

    The documented `2GB` default is 2147483648 bytes, so `GB`/`G` are binary here (as in the Go
    original's flag), and `MB` likewise; `Gi`/`Mi` are accepted too.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("size must not be negative")
        if text >= 2**63:
            raise ValueError(f"size {text} is too large")
        return text
    if not isinstance(text, str):
        # A config file can hold anything YAML can (true, 1.5, a list, null).
        raise ValueError(f"not a size: {text!r} (examples: 2GB, 500MB, 0)")
    # ASCII digits only: \d would take "٣GB"; a float of 400 digits is inf (OverflowError).
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 2GB, 500MB, 0)")
    unit = m.group(2).lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit {m.group(2)!r} in {text!r}")
    value = float(m.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(value) or value >= 2**63:
        raise ValueError(f"size {text!r} is too large")
    return int(value)


def parse_duration(text: str | float | int) -> float:
    """Parse Go-style durations (`168h`, `30s`, `1h30m`, `500ms`) or plain seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or text != text or text == float("inf"):
            raise ValueError(f"duration must be a finite number of seconds >= 0, got {text!r}")
        return float(text)
    if not isinstance(text, str):
        # A config file can hold anything YAML can (true, a list, null).
        raise ValueError(f"not a duration: {text!r} (examples: 168h, 30s, 1h30m)")
    s = text.strip()
    # ASCII digits only (\d would take "٣s"), and at most 15 of them before the point so
    # the value stays finite and exact enough.
    if re.fullmatch(r"[0-9]{1,15}(\.[0-9]+)?", s):
        return float(s)
    parts = re.findall(r"([0-9]{1,15}(?:\.[0-9]+)?)(ms|s|m|h|d)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"not a duration: {text!r} (examples: 168h, 30s, 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def parse_bool(value: Any) -> bool:
    """The one boolean parser: true/false, yes/no, on/off, 1/0, any case.

    Used for every boolean flag, `TOTE_*` variable and config-file value, and for the
    kill-switch ConfigMap, so the same word means the same thing wherever it is written.
    """
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r} (use true/false, yes/no, on/off or 1/0)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_port(name: str, port: int, *, zero_means: str = "") -> None:
    """0 < port < 65536; `zero_means` documents a port where 0 switches something off."""
    if zero_means and port == 0:
        return
    if not 0 < port < 65536:
        extra = f" (or 0: {zero_means})" if zero_means else ""
        raise ValueError(f"{_flag(name)} must be a port between 1 and 65535{extra}, got {port}")


def check_address(name: str, address: str) -> None:
    """`host:port` with a port in range (IPv6 hosts in brackets)."""
    _host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{_flag(name)} must be host:port, got {address!r}")
    check_port(name, int(port))


def check_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{_flag(name)} must be a positive duration, got {value!r}")


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
    registry_resolve: bool = False
    registry_resolve_timeout: float = 5.0
    registry_resolve_ca: str = ""
    registry_insecure: bool = False
    max_image_size: int = 2147483648
    max_concurrent_salvages: int = 2
    workers: int = 4
    reconcile_timeout: float = 30.0
    transfer_timeout: float = 1800.0
    salvagerecord_ttl: float = 168 * 3600.0
    reap_interval: float = 600.0
    backup_registry: str = ""
    backup_registry_secret: str = ""
    backup_registry_insecure: bool = False
    backup_registry_ca: str = ""
    webhook_url: str = ""
    webhook_events: list[str] = msgspec.field(default_factory=list)
    webhook_format: Literal["json", "slack"] = "json"
    webhook_secret_file: str = ""  # HMAC-SHA256 key for X-Tote-Signature-256
    agent_endpoints: dict[str, str] = msgspec.field(default_factory=dict)
    agent_namespace: str = ""  # where agent pods run; empty = the controller's namespace
    agent_selector: str = "app.kubernetes.io/component=agent,app.kubernetes.io/name=tote"
    agent_port: int = 9090
    # Runtime kill switch: ConfigMap <namespace>/<name>, key `enabled`.
    config_map: str = "tote-config"
    namespace: str = ""  # the controller's own namespace; empty = from service account / default
    leader_election: bool = True
    lease_name: str = "tote-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str = ""  # leader-election identity; empty = hostname + pid
    metrics_address: str = "0.0.0.0:8080"
    health_address: str = "0.0.0.0:8081"
    # Validating admission webhook: HTTPS on every replica; empty address = off.
    # Its own serving certificate: the API server verifies it against the webhook's
    # caBundle for the Service's DNS name, which the mTLS identities do not carry.
    admission_address: str = ""
    admission_tls_cert: str = ""
    admission_tls_key: str = ""
    status_address: str = "0.0.0.0:8082"  # WebSocket status feed (`tote status`), path /status
    plugins_disabled: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.registry_resolve_ca and not os.access(self.registry_resolve_ca, os.R_OK):
            raise ValueError(f"registry_resolve_ca: cannot read {self.registry_resolve_ca}")
        self._check_backup()
        if self.max_concurrent_salvages < 1:
            raise ValueError("max_concurrent_salvages must be at least 1")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        bad = set(self.webhook_events) - {"detected", "salvaged", "failed", "pushed"}
        if bad:
            raise ValueError(f"webhook_events: unknown event types {sorted(bad)} "
                             "(use detected, salvaged, failed, pushed)")
        if self.webhook_url and not re.match(r"https?://[^/\s]+", self.webhook_url):
            raise ValueError(f"webhook_url: {self.webhook_url!r} is not an http(s) URL")
        if self.webhook_secret_file and not os.access(self.webhook_secret_file, os.R_OK):
            raise ValueError(f"webhook_secret_file: cannot read {self.webhook_secret_file}")
        check_port("agent_port", self.agent_port)
        for name in ("metrics_address", "health_address"):
            check_address(name, getattr(self, name))
        for name in ("registry_resolve_timeout", "reconcile_timeout", "transfer_timeout",
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
        if self.admission_address:
            check_address("admission_address", self.admission_address)
            if not (self.admission_tls_cert and self.admission_tls_key):
                raise ValueError("--admission-address needs --admission-tls-cert and "
                                 "--admission-tls-key (the API server only calls HTTPS)")
        elif self.admission_tls_cert or self.admission_tls_key:
            raise ValueError("--admission-tls-cert/--admission-tls-key given without "
                             "--admission-address")


    def _check_backup(self) -> None:
        """`HOST[/prefix]` must start with a registry host; its options need it."""
        value = self.backup_registry
        if not value:
            given = [n for n in ("backup_registry_secret", "backup_registry_insecure",
                                 "backup_registry_ca") if getattr(self, n)]
            if given:
                raise ValueError(f"{', '.join(given)} given without backup_registry")
            return
        host = value.split("/", 1)[0]
        try:
            ref = reference.parse(f"{value.rstrip('/')}/x:y")
        except InvalidReference as exc:
            raise ValueError(f"backup_registry: {value!r} is not HOST[/prefix]: {exc}") from None
        prefix = value.split("/", 1)[1] if "/" in value else ""
        if ref.domain != host or "@" in value or value.endswith(":") or ":" in prefix:
            raise ValueError(f"backup_registry: {value!r} is not HOST[/prefix] (HOST is a "
                             "registry host such as registry.example.com or 10.0.0.5:5000)")
        if self.backup_registry_ca and not os.access(self.backup_registry_ca, os.R_OK):
            raise ValueError(f"backup_registry_ca: cannot read {self.backup_registry_ca}")


# `--help` text per core setting (README has the same tables).
HELP: dict[str, str] = {
    "log_format": "text or json (default text)",
    "log_level": "debug, info, warning or error (default info)",
    "tls_cert": "PEM certificate for mTLS with agents",
    "tls_key": "PEM key for --tls-cert",
    "tls_ca": "PEM CA bundle that signed controller and agent identities",
    "insecure": "run without mTLS (loudly logged; agents refuse to start without it or TLS)",
    "kubeconfig": "kubeconfig path (default: in-cluster, then $KUBECONFIG, ~/.kube/config)",
    "enabled": "global switch (default true); also ConfigMap --config-map key 'enabled'",
    "deny_namespaces": "comma list of namespaces never acted in",
    "salvage_on_auth_failure": "salvage even when the pull failed on 401/403 (default false)",
    "registry_resolve": "resolve tags in the registry when no node knows the digest",
    "registry_resolve_timeout": "registry lookup timeout (default 5s)",
    "registry_resolve_ca": "PEM bundle appended to system roots for registry lookups",
    "registry_insecure": "plain HTTP / unverified TLS for registry lookups",
    "max_image_size": "max bytes to move per salvage, e.g. 2GB (default); 0 = no limit",
    "max_concurrent_salvages": "simultaneous transfers (default 2)",
    "workers": "detection reconcile workers (default 4)",
    "reconcile_timeout": "deadline per detection reconcile (default 30s)",
    "transfer_timeout": "deadline per transfer (default 30m)",
    "salvagerecord_ttl": "delete SalvageRecords older than this (default 168h)",
    "reap_interval": "how often the leader reaps SalvageRecords (default 10m)",
    "backup_registry": "HOST[/prefix] to push salvaged images to (digest preserved)",
    "backup_registry_secret": "kubernetes.io/dockerconfigjson Secret (controller namespace) "
                              "with credentials for the backup registry",
    "backup_registry_insecure": "plain HTTP / unverified TLS for the backup registry",
    "backup_registry_ca": "PEM bundle appended to system roots for the backup registry",
    "webhook_url": "POST notifications (JSON or Slack) here; empty = no webhook",
    "webhook_events": "comma list of detected,salvaged,failed,pushed (default: all)",
    "webhook_format": "json (default) or slack (Block Kit)",
    "webhook_secret_file": "file holding the key for X-Tote-Signature-256 (HMAC-SHA256)",
    "agent_endpoints": "static node=host:port,... map of agents (out-of-cluster runs)",
    "agent_namespace": "namespace of agent pods (default: the controller's)",
    "agent_selector": "label selector of agent pods",
    "agent_port": "agent gRPC port (default 9090)",
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
    "status_address": "host:port of the WebSocket status feed, path /status (default "
                      "0.0.0.0:8082)",
    "plugins_disabled": "comma list of plugin names not to load",
}


# Flags whose value is parsed before msgspec validation.
_CONVERTERS: dict[str, Any] = {
    "max_image_size": parse_size,
    "salvagerecord_ttl": parse_duration,
    "reap_interval": parse_duration,
    "registry_resolve_timeout": parse_duration,
    "reconcile_timeout": parse_duration,
    "transfer_timeout": parse_duration,
    "lease_duration": parse_duration,
    "renew_deadline": parse_duration,
    "retry_period": parse_duration,
}


def _split_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _split_map(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in _split_list(value):
        if "=" not in item:
            raise ValueError(f"expected name=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out




def _normalise(cls: type[msgspec.Struct], raw: dict[str, Any]) -> dict[str, Any]:
    """Coerce strings from flags/env into the field types msgspec expects."""
    hints = {f.name: f.type for f in msgspec.structs.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")  # YAML keys may be numbers or booleans
        if name not in hints:
            raise ConfigError(f"unknown setting {key!r}")
        try:
            if name in _CONVERTERS:
                value = _CONVERTERS[name](value)
            elif hints[name] is bool:
                value = parse_bool(value)
            elif hints[name] is int and isinstance(value, str):
                value = int(value)
            elif hints[name] is float and isinstance(value, str):
                value = float(value)
            elif str(hints[name]).startswith("list"):
                value = _split_list(value)
            elif str(hints[name]).startswith("dict"):
                value = _split_map(value)
        except ValueError as exc:
            raise ConfigError(f"invalid value for --{name.replace('_', '-')}: {exc}") from exc
        out[name] = value
    return out


def load(
    cls: type[msgspec.Struct],
    flags: dict[str, Any],
    *,
    config_file: str | None = None,
    environ: dict[str, str] | None = None,
) -> Any:
    """Merge defaults < config file < environment < flags and validate into `cls`."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    if config_file:
        try:
            data = yaml.safe_load(Path(config_file).read_text())
        except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8, NUL
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping")
        plugins = data.pop("plugins", None)
        if isinstance(plugins, dict) and "disabled" in plugins:
            data["plugins_disabled"] = plugins["disabled"]
        merged.update(_normalise(cls, data))
    for f in msgspec.structs.fields(cls):
        env_key = "TOTE_" + f.name.upper()
        if env_key in env:
            merged.update(_normalise(cls, {f.name: env[env_key]}))
    merged.update(_normalise(cls, {k: v for k, v in flags.items() if v is not None}))
    try:
        return msgspec.convert(merged, cls)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def add_flags(parser: argparse.ArgumentParser, cls: type[msgspec.Struct]) -> None:
    """Add one `--flag` per settings field; values stay strings until `load` validates them.

    Booleans accept `--flag`, `--flag=true|false` and `--no-flag`. Help text comes from
    `HELP`, then from the class's own `FLAG_HELP` (a plugin's settings group).
    """
    help_text = {**HELP, **getattr(cls, "FLAG_HELP", {})}
    for f in msgspec.structs.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, nargs="?", const="true", default=None, dest=f.name,
                                metavar="true|false", help=help_text.get(f.name))
            parser.add_argument(
                "--no-" + f.name.replace("_", "-"),
                action="store_const",
                const="false",
                dest=f.name,
                help=argparse.SUPPRESS,
            )
        else:
            parser.add_argument(flag, default=None, dest=f.name, metavar="VALUE",
                                help=help_text.get(f.name))


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2 from the CLI) instead of exiting
    from inside the parser, so every bad command line fails the same way as a bad value."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


def parse_args(
    cls: type[msgspec.Struct], argv: Sequence[str], prog: str
) -> Any:
    """Parse a subcommand's argv into validated settings (used by the CLI and tests)."""
    parser = _ArgumentParser(prog=prog)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML/JSON settings file (flags > TOTE_* env > file)")
    add_flags(parser, cls)
    ns = vars(parser.parse_args(list(argv)))
    config_file = ns.pop("config")
    return load(cls, ns, config_file=config_file)
