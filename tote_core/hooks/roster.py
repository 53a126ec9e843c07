"""Recording what became of each plugin: one `PluginInfo` row per installed plugin — enabled,
disabled (and by what) or failed (and why) — and the failures of hooks at run time.

Start-up never raises while loading: a plugin that fails to import, to build, to fit the
hook specs or to validate its settings is a `failed` row with its reason; the caller decides
what to do with the first one (`failure`: `tote controller` refuses to start, `tote plugins`
shows the table). A hook that raises at run time is logged at ERROR with its traceback and
counted in `tote_plugin_failures_total{plugin,hook}` (`hook_failed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import msgspec

from tote_core import metrics
from tote_core.errors import ConfigError
from tote_core.hooks.setting_info import SettingInfo

log = logging.getLogger("tote.plugins")
# Built-in plugins' former names, for the error that names them in plugins.disabled.
RENAMED = {"containerd": "agent", "notify": "webhook"}


class PluginInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One plugin as `tote plugins` shows it."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    enabled: bool
    hooks: tuple[str, ...] = ()
    error: str = ""
    state: Literal["enabled", "disabled", "failed"] = "enabled"
    reason: str = ""  # why disabled or failed
    settings: tuple[SettingInfo, ...] = ()


def hook_failed(plugin: str, hook: str, exc: BaseException) -> None:
    """A hook implementation (or a plugin service) raised: logged and counted; the caller
    goes on without it."""
    log.error("plugin %s failed in %s: %s: %s", plugin, hook, type(exc).__name__, exc,
              exc_info=exc)
    metrics.PLUGIN_FAILURES.labels(plugin, hook).inc()


class Roster:
    """The rows of `tote plugins`, in load order, and the disabled names no plugin has."""

    def __init__(self) -> None:
        self.plugins: list[PluginInfo] = []
        self.unknown_disabled: list[str] = []

    def add(self, info: PluginInfo) -> None:
        self.plugins.append(info)

    def refuse(self, base: Callable[..., PluginInfo], name: str, reason: str,
               exc: BaseException | None = None) -> None:
        """`name` could not be loaded: a failed row."""
        # Not logged at ERROR: the caller reports it (start-up error, or the table); the
        # traceback is there at debug level for the plugin's author.
        log.debug("plugin %s: %s", name, reason, exc_info=exc)
        metrics.PLUGIN_FAILURES.labels(name, "load").inc()
        self.plugins.append(base(enabled=False, state="failed", error=reason, reason=reason))

    def mark_failed(self, name: str, reason: str) -> None:
        """A loaded plugin turned out unusable (its settings): its row becomes failed (the
        host unregisters it)."""
        metrics.PLUGIN_FAILURES.labels(name, "load").inc()
        self.plugins = [
            msgspec.structs.replace(p, enabled=False, state="failed", error=reason,
                                    reason=reason, hooks=())
            if p.name == name else p for p in self.plugins]

    def describe_settings(self, settings: dict[str, tuple[SettingInfo, ...]]) -> None:
        """Attach each plugin's settings to its row."""
        self.plugins = [msgspec.structs.replace(p, settings=settings.get(p.name, ()))
                        for p in self.plugins]

    def failure(self) -> ConfigError | None:
        """The first plugin that could not be loaded, as the one-line start-up error (with
        how to run without it); None when every plugin loaded or was disabled."""
        for p in self.plugins:
            if p.state == "failed":
                return ConfigError(
                    f"plugin {p.name}: {p.error} (to run without it: --plugins-disabled "
                    f"{p.name}, TOTE_PLUGINS_DISABLED={p.name} or plugins.disabled: "
                    f"[{p.name}] in the config file)")
        return None

    def unknown_disabled_error(self, disabled_by: str) -> ConfigError | None:
        """Disabling a plugin that is not installed is refused: the name is misspelled, or
        it is a built-in's old name, and what the operator meant to turn off would run."""
        if not self.unknown_disabled:
            return None
        names = ", ".join(f"{n} (now called {RENAMED[n]})" if n in RENAMED else n
                          for n in self.unknown_disabled)
        installed = ", ".join(sorted(p.name for p in self.plugins)) or "none"
        return ConfigError(f"{disabled_by} names plugins that are not installed: {names} "
                           f"(installed: {installed})")
