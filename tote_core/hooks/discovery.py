"""Finding plugins: every entry point in group `tote`, built-ins first, each loaded, built
and registered under its entry-point name — or listed as disabled or failed.

An entry point names a class (or a zero-argument factory function); one object is built and
registered, so a plugin's state lives on its object and `configure` fills it in. An entry
point naming an object (or a module) registers it as is. Disabled names are blocked with
pluggy's `set_blocked`, so they are never imported.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Iterable
from importlib import metadata

from tote_core import DISTRIBUTION
from tote_core.errors import ConfigError
from tote_core.hooks.registry import PluginRegistry, one_line
from tote_core.hooks.roster import PluginInfo, Roster

GROUP = "tote"
BUILTIN_DISTRIBUTION = DISTRIBUTION  # plugins this package ships are shown as built-in
# `plugins:` keys of the config file that are not plugin sections.
RESERVED_NAMES = frozenset({"disabled", "config"})  # keys of plugins: (file, chart)


def _normalized(dist: str) -> str:
    """A distribution name as PEP 503 compares them (metadata may spell `tote_salvage`)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _is_builtin(ep: metadata.EntryPoint) -> bool:
    return ep.dist is not None and _normalized(ep.dist.name) == BUILTIN_DISTRIBUTION


def discover(registry: PluginRegistry, roster: Roster, disabled: Iterable[str] = (), *,
             disabled_by: str = "") -> list[PluginInfo]:
    """Load every entry point in group `tote` except the disabled ones into `registry`,
    with a row in `roster` for each.

    Order: the built-in plugins first, then third-party ones, each group by entry-point
    name. pluggy calls the last registered implementation first, so a third-party plugin
    answers before the built-ins (its first-result `select_source` wins over
    `source-policy`'s); `tryfirst`/`trylast` and wrappers reorder within that.

    Nothing raises here (see `roster`). `disabled_by` says where the disabled names came
    from (shown as their reason).
    """
    pm = registry.pm
    off = set(disabled)
    for name in off:
        pm.set_blocked(name)
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        seen.setdefault(ep.name, ep)
    ordered = sorted(seen.values(), key=lambda e: (not _is_builtin(e), e.name))
    for ep in ordered:
        dist = ep.dist.name if ep.dist else "?"
        base = functools.partial(
            PluginInfo, name=ep.name, module=ep.value, distribution=dist,
            version=ep.dist.version if ep.dist else "?", builtin=_is_builtin(ep),
        )
        if ep.name in RESERVED_NAMES:
            roster.refuse(base, ep.name, f"the name {ep.name!r} is reserved in the config "
                          "file's plugins section; rename the entry point")
            continue
        if pm.is_blocked(ep.name):
            roster.add(base(enabled=False, state="disabled",
                            reason=f"disabled by {disabled_by}" if disabled_by
                            else "disabled"))
            continue
        try:
            loaded = ep.load()
            # A class or factory is called once; an object (or module) is the plugin.
            built = isinstance(loaded, type) or inspect.isroutine(loaded)
            plugin = loaded() if built else loaded
        except Exception as exc:
            roster.refuse(base, ep.name, f"failed to load ({ep.value}): "
                          f"{type(exc).__name__}: {one_line(exc)}", exc)
            continue
        try:
            registry.register(plugin, ep.name)
        except ConfigError as exc:
            roster.refuse(base, ep.name, str(exc).removeprefix(f"plugin {ep.name}: "))
            continue
        roster.add(base(enabled=True, state="enabled", hooks=registry.hooks_of(ep.name)))
    roster.unknown_disabled = sorted(off - set(seen))
    return roster.plugins
