"""Loading one settings Struct: defaults, then the config file (`--config`, YAML or JSON), then
the environment, then flags, merged and validated by msgspec — so a bad value from any source
is one `ConfigError` naming the setting and where its value came from, before anything
starts.

The same code loads core's Structs and every plugin's (`tote_core.hooks.loading` adds the
plugins' groups): a `Group` says how a Struct's fields are spelled in each source — core's
`max_image_size` is `--max-image-size`, `TOTE_MAX_IMAGE_SIZE` and `max-image-size:` at the top
of the config file; plugin `webhook`'s `url` is `--webhook-url`, `TOTE_WEBHOOK_URL` and
`plugins: {webhook: {url: …}}`. Values are parsed by the field's type, so `30s` works for
any `tote_core.values.Duration` field and `2GB` for any `Size`, core's or a plugin's.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import msgspec.inspect as mi
import yaml

from tote_core.errors import ConfigError
from tote_core.settings import HELP
from tote_core.values import PARSE, parse_bool, parse_duration, parse_size

_PARSERS: dict[str, Any] = {"duration": parse_duration, "size": parse_size}
COMMAND_LINE = "the command line"


@dataclass(frozen=True)
class Group:
    """One settings Struct and how its fields are spelled in flags, environment and file.

    `prefix` is '' for core and `<plugin>-` for a plugin; `owner` names the plugin in errors
    (empty for core); `section` is where the Struct's keys sit in the config file (None:
    at the top level).
    """

    cls: type[msgspec.Struct]
    prefix: str = ""
    owner: str = ""
    section: str | None = None

    def flag(self, field: str) -> str:
        return "--" + self.prefix + field.replace("_", "-")

    def dest(self, field: str) -> str:
        return (self.prefix + field).replace("-", "_")

    def env(self, field: str) -> str:
        return "TOTE_" + self.dest(field).upper()

    def file_key(self, field: str) -> str:
        key = field.replace("_", "-")
        return f"{self.section}.{key}" if self.section else key

    def fields(self) -> list[mi.Field]:
        info = mi.type_info(self.cls)
        assert isinstance(info, mi.StructType)
        return list(info.fields)

    def help(self, field: str) -> str | None:
        text = {**HELP, **getattr(self.cls, "FLAG_HELP", {})} if not self.owner else \
            dict(getattr(self.cls, "FLAG_HELP", {}))
        return text.get(field)

    def where(self) -> str:
        return f"plugin {self.owner}: " if self.owner else ""


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


def coerce(kind: mi.Type, value: Any) -> Any:
    """A value as written (a flag's string, a YAML scalar or list) → what msgspec expects
    for a field of type `kind`; msgspec validates the result."""
    if isinstance(kind, mi.Metadata):
        parser = (kind.extra or {}).get(PARSE)
        if parser in _PARSERS:
            return _PARSERS[parser](value)
        kind = kind.type
    if isinstance(kind, mi.BoolType):
        return parse_bool(value)
    if isinstance(kind, mi.IntType) and isinstance(value, str):
        return int(value)
    if isinstance(kind, mi.FloatType) and isinstance(value, str):
        return float(value)
    if isinstance(kind, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return _split_list(value)
    if isinstance(kind, mi.DictType):
        return _split_map(value)
    return value


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class Merged:
    """The raw values of one Group and, per field, where the winning value came from."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.kinds = {f.name: f.type for f in group.fields()}
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def put(self, key: Any, value: Any, source: str) -> None:
        g = self.group
        name = str(key).replace("-", "_")  # YAML keys may be numbers or booleans
        if name not in self.kinds:
            known = [k.replace("_", "-") for k in self.kinds]
            raise ConfigError(f"{g.where()}unknown setting {key!r} in {source}"
                              f"{_suggest(str(key).replace('_', '-'), known)}")
        try:
            self.values[name] = coerce(self.kinds[name], value)
        except ValueError as exc:
            raise ConfigError(f"{g.where()}invalid value for {g.flag(name)}"
                              f"{_from(source)}: {exc}") from exc
        self.sources[name] = source

    def read_file(self, data: Mapping[str, Any], label: str) -> None:
        for key, value in data.items():
            self.put(key, value, f"config file {label}" + (
                f" ({self.group.section}.{key})" if self.group.section else ""))

    def read_env(self, environ: Mapping[str, str]) -> None:
        for name in self.kinds:
            key = self.group.env(name)
            if key in environ:
                self.put(name, environ[key], key)

    def read_flags(self, flags: Mapping[str, Any]) -> None:
        for name, value in flags.items():
            if value is not None:
                self.put(name, value, COMMAND_LINE)

    def validate(self) -> Any:
        g = self.group
        try:
            return msgspec.convert(self.values, g.cls)
        except msgspec.ValidationError as exc:
            m = re.search(r"at `\$\.(\w+)", str(exc))
            field = m.group(1) if m else ""
            if field:
                text = str(exc).split(" - at ")[0]
                raise ConfigError(f"{g.where()}invalid value for {g.flag(field)}"
                                  f"{_from(self.sources.get(field, ''))}: {text}") from exc
            raise ConfigError(f"{g.where()}invalid settings: {exc}") from exc
        except ValueError as exc:  # the Struct's own cross-field checks (__post_init__)
            raise ConfigError(f"{g.where()}invalid settings: {exc}") from exc


def _from(source: str) -> str:
    return f" (from {source})" if source and source != COMMAND_LINE else ""


def read_config_file(path: str | None) -> dict[str, Any]:
    """The config file as a mapping ({} without one); a file that cannot be read or does not
    hold a mapping is a ConfigError."""
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8, NUL
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    plugins = data.get("plugins")
    if plugins is not None and not isinstance(plugins, dict):
        raise ConfigError(f"config file {path}: plugins must be a mapping (disabled: [...], "
                          "<plugin>: {...})")
    return data


def core_file_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """The config file's core keys (everything but the `plugins:` section, whose
    `disabled` list is core's `plugins-disabled`)."""
    out = {k: v for k, v in data.items() if k != "plugins"}
    plugins = data.get("plugins") or {}
    if "disabled" in plugins:
        out["plugins_disabled"] = plugins["disabled"]
    return out


def load(
    cls: type[msgspec.Struct],
    flags: dict[str, Any],
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Merge defaults < config file < environment < flags and validate into `cls` (core's
    Structs; plugin sections of the file are `tote_core.hooks.loading`'s)."""
    merged = Merged(Group(cls))
    if config_file:
        merged.read_file(core_file_values(read_config_file(config_file)), config_file)
    merged.read_env(os.environ if environ is None else environ)
    merged.read_flags(flags)
    return merged.validate()


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
              group: Group | type[msgspec.Struct]) -> None:
    """Add one `--flag` per settings field; values stay strings until `load` validates them.

    Booleans accept `--flag`, `--flag=true|false` and `--no-flag`. Help text comes from
    core's `HELP` and the Struct's own `FLAG_HELP` class variable.
    """
    g = group if isinstance(group, Group) else Group(group)
    for f in g.fields():
        flag, dest = g.flag(f.name), g.dest(f.name)
        if isinstance(f.type, mi.BoolType):
            parser.add_argument(flag, nargs="?", const="true", default=None, dest=dest,
                                metavar="true|false", help=g.help(f.name))
            parser.add_argument("--no-" + flag[2:], action="store_const", const="false",
                                dest=dest, help=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, default=None, dest=dest, metavar="VALUE",
                                help=g.help(f.name))


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2 from the CLI) instead of exiting
    from inside the parser, so every bad command line fails the same way as a bad value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--webhook-u` must not quietly mean `--webhook-url`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}{self._suggestion(message)} (see {self.prog} --help)")

    def _suggestion(self, message: str) -> str:
        m = re.match(r"unrecognized arguments: (--[\w-]+)", message)
        if not m:
            return ""
        flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        return _suggest(m.group(1).split("=")[0], flags)


def parse_args(
    cls: type[msgspec.Struct], argv: Sequence[str], prog: str
) -> Any:
    """Parse a plugin-free program's argv (`tote agent`) into validated settings."""
    parser = ArgumentParser(prog=prog)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML/JSON settings file (flags > TOTE_* env > file)")
    add_flags(parser, cls)
    ns = vars(parser.parse_args(list(argv)))
    config_file = ns.pop("config")
    return load(cls, ns, config_file=config_file)
