"""Start-up, the one way every subcommand does it: which plugins are off, load the rest, ask
each for its settings Struct, then parse flags, environment and config file into core's
settings and every plugin's.

The order matters because the command line depends on the plugins (a plugin's settings are
flags) and the plugins depend on the configuration (which are disabled). So the disabled list
is read first, alone and with the usual precedence — `--plugins-disabled` >
`TOTE_PLUGINS_DISABLED` > `plugins.disabled` in the config file, never a union — then the
plugins are loaded and asked (`settings_type`), then everything is parsed at once. A plugin
that is disabled is not imported, so its settings are unknown: its flags
(`--<plugin>-…`), variables and config-file section are accepted and ignored, so disabling a
plugin never breaks a command line written for it.

Nothing here starts anything: every mistake — a plugin that fails to import, a settings hook
that raises, a bad value, an unknown plugin section — is one `ConfigError` naming the plugin
and where the value came from, before the controller opens a connection.
"""

from __future__ import annotations

import argparse
import logging
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import msgspec.inspect as mi

from tote_core.errors import ConfigError
from tote_core.hooks.host import PluginHost
from tote_core.hooks.setting_info import describe
from tote_core.hooks.types import PluginSettings
from tote_core.settings_loader import (
    COMMAND_LINE,
    ArgumentParser,
    Group,
    Merged,
    add_flags,
    core_file_values,
    read_config_file,
)

log = logging.getLogger("tote.plugins")
_SCALARS = (mi.StrType, mi.BoolType, mi.IntType, mi.FloatType, mi.LiteralType)


@dataclass
class Loaded:
    """What start-up produced: core's settings, the loaded plugins and their settings, and
    the subcommand's own arguments."""

    settings: Any
    host: PluginHost
    args: argparse.Namespace
    plugin_settings: dict[str, msgspec.Struct] = field(default_factory=dict)
    # Per plugin, where each setting's value came from (for `tote plugins --json`).
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    core_error: str = ""  # `tote plugins` only: core settings that did not validate


def plugin_group(plugin: str, cls: type[msgspec.Struct]) -> Group:
    return Group(cls, prefix=f"{plugin}-", owner=plugin, section=f"plugins.{plugin}")


def check_settings_type(plugin: str, cls: Any) -> None:
    """A plugin's `settings_type` answer must be a Struct every source can fill in."""
    if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
        raise ConfigError(f"plugin {plugin}: settings_type returned {cls!r}, not a "
                          "msgspec.Struct class")
    try:
        fields = plugin_group(plugin, cls).fields()
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigError(f"plugin {plugin}: settings Struct {cls.__name__}: {exc}") from exc
    for f in fields:
        if f.required:
            raise ConfigError(f"plugin {plugin}: setting {f.name} of {cls.__name__} has no "
                              "default (every plugin setting needs one)")
        if not _supported(f.type):
            raise ConfigError(f"plugin {plugin}: setting {f.name} of {cls.__name__} has a "
                              "type flags cannot spell (use str, bool, int, float, Duration, "
                              "Size, Literal, list[str] or dict[str, str])")
    try:
        cls()
    except (msgspec.ValidationError, ValueError, TypeError) as exc:
        raise ConfigError(f"plugin {plugin}: the defaults of {cls.__name__} do not validate: "
                          f"{exc}") from exc


def _supported(kind: mi.Type) -> bool:
    if isinstance(kind, mi.Metadata):
        kind = kind.type
    if isinstance(kind, _SCALARS):
        return True
    if isinstance(kind, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return isinstance(kind.item_type, _SCALARS)
    if isinstance(kind, mi.DictType):
        return isinstance(kind.key_type, mi.StrType) and isinstance(kind.value_type, _SCALARS)
    return False


def _settings_types(host: PluginHost, core: Group, *, strict: bool
                    ) -> dict[str, type[msgspec.Struct]]:
    """Step 3: ask every loaded plugin for its settings Struct; refuse one that raises, answers
    something unusable or would spell a flag another group already has."""
    taken = {core.dest(f.name): "core" for f in core.fields()}
    taken["config"] = "core"
    out: dict[str, type[msgspec.Struct]] = {}
    for impl in host.pm.hook.settings_type.get_hookimpls():
        name = impl.plugin_name
        try:
            try:
                cls = impl.function()
            except Exception as exc:
                raise ConfigError(f"plugin {name}: its settings_type hook raised "
                                  f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                                  ) from exc
            if cls is None:
                continue
            check_settings_type(name, cls)
            group = plugin_group(name, typing.cast(type[msgspec.Struct], cls))
            for f in group.fields():
                owner = taken.setdefault(group.dest(f.name), name)
                if owner != name:
                    raise ConfigError(f"plugin {name}: setting {f.name} would be "
                                      f"{group.flag(f.name)}, which {owner} already has")
        except ConfigError as exc:
            host.mark_failed(name, str(exc).removeprefix(f"plugin {name}: "))
            continue
        out[name] = typing.cast(type[msgspec.Struct], cls)
    if strict:
        host.check()
    return out


def _disabled(pre: argparse.Namespace, environ: Mapping[str, str],
              file: Mapping[str, Any], config_file: str | None) -> tuple[list[str], str]:
    """The disabled plugin names and where they came from (first source that has them)."""
    merged = Merged(Group(_Disabled))
    if pre.plugins_disabled is not None:
        merged.put("plugins_disabled", pre.plugins_disabled, COMMAND_LINE)
        where = "--plugins-disabled"
    elif "TOTE_PLUGINS_DISABLED" in environ:
        merged.put("plugins_disabled", environ["TOTE_PLUGINS_DISABLED"],
                   "TOTE_PLUGINS_DISABLED")
        where = "TOTE_PLUGINS_DISABLED"
    elif "disabled" in (file.get("plugins") or {}):
        merged.put("plugins_disabled", file["plugins"]["disabled"],
                   f"config file {config_file} (plugins.disabled)")
        where = f"plugins.disabled in {config_file}"
    else:
        return [], ""
    value: _Disabled = merged.validate()
    return value.plugins_disabled, where


class _Disabled(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    plugins_disabled: list[str] = msgspec.field(default_factory=list)


def load(
    core_cls: type[msgspec.Struct],
    argv: Sequence[str],
    prog: str,
    *,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    environ: Mapping[str, str] | None = None,
    strict: bool = True,
    host: PluginHost | None = None,
    file_superset: type[msgspec.Struct] | None = None,
) -> Loaded:
    """Load plugins and parse `argv` (+ environment + `--config`) into core's `core_cls`
    and every plugin's settings.

    `extra` adds the subcommand's own arguments (returned in `Loaded.args`).
    `file_superset`: a config file written for that Struct is accepted too — its keys that
    `core_cls` lacks are skipped (`tote doctor` reads the controller's file). `strict=False`
    (`tote plugins`) never raises for a plugin: a plugin that fails to load, to declare or
    to validate its settings is marked failed with its reason, and core's errors are kept
    in `Loaded.core_error`.

    The steps, in the order the module docstring explains: read the disabled list, load the
    other plugins, ask them for their settings, parse the command line, then validate core's
    settings and each plugin's.
    """
    env = os.environ if environ is None else environ
    pre = _read_disabled_list(argv, prog, env)
    host = _load_plugins(host or PluginHost(), pre, strict=strict)
    core = Group(core_cls)
    groups = {name: plugin_group(name, cls)
              for name, cls in _settings_types(host, core, strict=strict).items()}
    values, extra_args = _parse_command_line(argv, prog, extra, core, groups, pre.disabled)
    loaded = Loaded(settings=None, host=host, args=extra_args)
    _validate_core(loaded, pre, env, values, core, groups, file_superset, strict=strict)
    _check_sections(pre.file, pre.config, host)
    _validate_plugins(loaded, pre, env, values, groups, strict=strict)
    host.plugin_settings = PluginSettings(loaded.plugin_settings)
    host.describe_settings(describe(groups, loaded.plugin_settings, loaded.sources))
    return loaded


@dataclass
class _PreParsed:
    """What is known before any plugin loads: the config file and the disabled list."""

    config: str | None
    file: dict[str, Any]
    disabled: list[str]
    disabled_by: str


def _read_disabled_list(argv: Sequence[str], prog: str, env: Mapping[str, str]) -> _PreParsed:
    """Step 1: `--config` and the disabled plugins, from the one source that names them."""
    pre_parser = ArgumentParser(prog=prog, add_help=False)
    pre_parser.add_argument("--config", default=None)
    pre_parser.add_argument("--plugins-disabled", default=None)
    pre, _ = pre_parser.parse_known_args(list(argv))
    file = read_config_file(pre.config)
    disabled, disabled_by = _disabled(pre, env, file, pre.config)
    return _PreParsed(config=pre.config, file=file, disabled=disabled,
                      disabled_by=disabled_by)


def _load_plugins(host: PluginHost, pre: _PreParsed, *, strict: bool) -> PluginHost:
    """Step 2: import every plugin not disabled; strictly, refuse a failed plugin and a
    disabled name no plugin has."""
    host.load(pre.disabled, disabled_by=pre.disabled_by)
    if strict:
        host.check()
        refused = host.unknown_disabled_error(pre.disabled_by)
        if refused is not None:
            raise refused
    return host


def _parse_command_line(
    argv: Sequence[str], prog: str, extra: Callable[[argparse.ArgumentParser], None] | None,
    core: Group, groups: Mapping[str, Group], disabled: Sequence[str],
) -> tuple[dict[str, Any], argparse.Namespace]:
    """Step 4: one parser with core's flags, every plugin's and the subcommand's own; the
    parsed values, and the subcommand's arguments apart."""
    parser = ArgumentParser(prog=prog)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML/JSON settings file (flags > TOTE_* env > file)")
    if extra is not None:
        extra(parser)
    add_flags(parser, core)
    for name, group in groups.items():
        add_flags(parser.add_argument_group(f"plugin {name}"), group)
    ns, unknown = parser.parse_known_args(list(argv))
    stray = _stray(unknown, disabled)
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if unknown:
        log.info("ignoring settings of disabled plugins: %s", " ".join(unknown))
    values = vars(ns)
    extra_args = argparse.Namespace(**{
        k: v for k, v in values.items()
        if k != "config" and k not in _dests(core) and not any(
            k in _dests(g) for g in groups.values())})
    return values, extra_args


def _validate_core(
    loaded: Loaded, pre: _PreParsed, env: Mapping[str, str], values: Mapping[str, Any],
    core: Group, groups: Mapping[str, Group], file_superset: type[msgspec.Struct] | None,
    *, strict: bool,
) -> None:
    """Step 5: core's settings from file < environment < flags into `loaded.settings`
    (not strict: the error into `loaded.core_error`)."""
    merged = Merged(core)
    try:
        _misplaced(pre.file, pre.config, core, groups)
        if pre.config:
            values_in_file = core_file_values(pre.file)
            if file_superset is not None:
                wider = {f.name for f in Group(file_superset).fields()}
                values_in_file = {k: v for k, v in values_in_file.items()
                                  if str(k).replace("-", "_") in merged.kinds
                                  or str(k).replace("-", "_") not in wider}
            merged.read_file(values_in_file, pre.config)
        merged.read_env(env)
        merged.read_flags({k: values[core.dest(k)] for k in merged.kinds})
        if pre.disabled_by:  # the value the plugins were loaded with, whatever else says
            merged.values["plugins_disabled"] = pre.disabled
        loaded.settings = merged.validate()
    except ConfigError as exc:
        if strict:
            raise
        loaded.core_error = str(exc)
        loaded.settings = None


def _validate_plugins(
    loaded: Loaded, pre: _PreParsed, env: Mapping[str, str], values: Mapping[str, Any],
    groups: Mapping[str, Group], *, strict: bool,
) -> None:
    """Step 6: each plugin's settings from its `plugins.<name>` section < environment <
    flags into `loaded.plugin_settings` (not strict: a plugin that fails is marked failed)."""
    for name, group in groups.items():
        plugin = Merged(group)
        try:
            section = (pre.file.get("plugins") or {}).get(name)
            if section is not None:
                if not isinstance(section, dict):
                    raise ConfigError(f"plugin {name}: config file {pre.config}: "
                                      f"plugins.{name} must be a mapping of settings")
                plugin.read_file(section, str(pre.config))
            plugin.read_env(env)
            plugin.read_flags({k: values[group.dest(k)] for k in plugin.kinds})
            loaded.plugin_settings[name] = plugin.validate()
            loaded.sources[name] = plugin.sources
        except ConfigError as exc:
            if strict:
                raise
            loaded.host.mark_failed(name, str(exc).removeprefix(f"plugin {name}: "))


def _misplaced(file: Mapping[str, Any], path: str | None, core: Group,
               groups: Mapping[str, Group]) -> None:
    """A plugin's setting written at the top of the config file (as flags spell it) gets
    the place it belongs, not just "unknown setting"."""
    core_keys = _dests(core)
    for key in file:
        dest = str(key).replace("-", "_")
        if dest in core_keys or key == "plugins":
            continue
        for name, group in groups.items():
            for f in group.fields():
                if group.dest(f.name) == dest:
                    raise ConfigError(
                        f"config file {path}: {key} is a setting of plugin {name}; write it "
                        f"as plugins: {{{name}: {{{f.name.replace('_', '-')}: …}}}}")


def _stray(unknown: Sequence[str], disabled: Sequence[str]) -> list[str]:
    """Arguments argparse did not know, minus a disabled plugin's flags (`--p-x=v`,
    `--p-x v`, `--no-p-x`)."""
    off = tuple(f"--{n}-" for n in disabled) + tuple(f"--no-{n}-" for n in disabled)
    stray: list[str] = []
    skip_value = False
    for arg in unknown:
        if skip_value and not arg.startswith("-"):
            skip_value = False
            continue
        skip_value = arg.startswith(off) and "=" not in arg and not arg.startswith("--no-")
        if not arg.startswith(off):
            stray.append(arg)
    return stray


def _dests(group: Group) -> set[str]:
    return {group.dest(f.name) for f in group.fields()}


def _check_sections(file: Mapping[str, Any], path: str | None, host: PluginHost) -> None:
    """Every `plugins.<name>` section of the config file names an installed plugin."""
    known = {p.name for p in host.plugins}
    for name in (file.get("plugins") or {}):
        if name in ("disabled", "config") or name in known:
            continue
        raise ConfigError(f"config file {path}: plugins.{name}: no plugin named {name!r} is "
                          f"installed (installed: {', '.join(sorted(known)) or 'none'})")
