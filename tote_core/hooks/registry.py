"""Registering plugin objects with pluggy, each hook function behind its bridge.

Registration is where a plugin that does not fit the hook specs is refused, naming the
plugin: an implementation of no known hook (with the closest hook name), an argument a spec
does not have (pluggy's validation), a wrapper that is not a generator function. Each
implementation is registered through a bridge (`bridge.py`) that awaits what it returns and,
except for the hooks whose exceptions are the caller's control flow, isolates its failure.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from tote_core.errors import ConfigError
from tote_core.hooks import bridge, hookspecs
from tote_core.hooks.roster import hook_failed

# Hooks whose exceptions are the caller's control flow, never isolated.
CONTROL_FLOW_HOOKS = frozenset({"transfer", "push_image"})
# Hooks whose exceptions reach the caller: the control-flow ones, and start-up's
# `settings_type`, whose failure is a start-up error naming the plugin.
UNISOLATED_HOOKS = CONTROL_FLOW_HOOKS | {"settings_type"}


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _closest(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; known hooks: {', '.join(names)}"


class _Registered:
    """What pluggy holds for one plugin: the plugin's hook functions behind bridges."""

    def __init__(self, plugin: object) -> None:
        self._tote_plugin = plugin


class PluginRegistry:
    """pluggy's plugin manager with tote's hook specs, and tote's checks on registration."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)

    def register(self, plugin: object, name: str) -> bool:
        """Register a plugin object under `name`; False when `name` is disabled.

        Raises ConfigError naming the plugin when it does not fit the hook specs. Nothing of
        a refused plugin stays registered.
        """
        if self.pm.is_blocked(name):
            return False
        proxy = _Registered(plugin)
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function = getattr(plugin, attr)
            if not self.is_spec(attr):
                raise ConfigError(f"plugin {name}: {attr} is not a hook"
                                  f"{_closest(attr, self.hook_names())}")
            if opts.get("wrapper") and not inspect.isgeneratorfunction(function):
                # The isolating shim is a generator whatever the plugin wrote, so pluggy
                # cannot see this; without the check every call would fail instead.
                raise ConfigError(f"plugin {name}: {attr} is a wrapper (wrapper=True) but not "
                                  "a generator function; a wrapper must `yield` exactly once")
            bridged = _bridge(name, attr, function, opts)
            setattr(bridged, f"{hookspecs.PROJECT}_impl", opts)
            setattr(proxy, attr, bridged)
        try:
            self.pm.register(proxy, name=name)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin {name}: {one_line(exc)}") from exc
        return True

    def unregister(self, name: str) -> None:
        proxy = self.pm.get_plugin(name)
        if proxy is not None:
            self.pm.unregister(proxy, name=name)

    @classmethod
    def hook_names(cls) -> list[str]:
        return sorted(n for n in dir(hookspecs) if cls.is_spec(n))

    @staticmethod
    def is_spec(name: str) -> bool:
        return hasattr(getattr(hookspecs, name, None), f"{hookspecs.PROJECT}_spec")

    def plugin(self, name: str) -> object | None:
        """The plugin object registered under `name` (not pluggy's bridged view of it)."""
        proxy = self.pm.get_plugin(name)
        return proxy._tote_plugin if isinstance(proxy, _Registered) else None

    def implementers(self, hook: str) -> list[str]:
        """Names of the registered plugins implementing `hook`."""
        caller = getattr(self.pm.hook, hook)
        return [impl.plugin_name for impl in caller.get_hookimpls()]

    def hooks_of(self, name: str) -> tuple[str, ...]:
        """The hooks plugin `name` implements, sorted."""
        return tuple(sorted(h.name for h in self.pm.get_hookcallers(
            self.pm.get_plugin(name)) or []))


def _bridge(plugin: str, hook: str, function: Callable[..., Any], opts: Any
            ) -> Callable[..., Any]:
    return bridge.bridge(plugin, hook, function, opts,
                         isolate=hook not in UNISOLATED_HOOKS, failed=hook_failed)
