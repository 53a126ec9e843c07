"""Loading settings: defaults, then the config file (`--config`, YAML or JSON), then the
environment (`TOTE_<FLAG>`), then flags, merged and validated by msgspec into one Struct —
so a bad value from any source is one `ConfigError` naming the setting, before anything
starts. `parse_args` builds the argparse parser from a settings Struct's fields and help."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import yaml

from tote_core.errors import ConfigError
from tote_core.settings import HELP
from tote_core.values import parse_bool, parse_duration, parse_size

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
    "tls_issue_validity": parse_duration,
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
