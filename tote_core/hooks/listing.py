"""The `tote plugins` table: one row per installed plugin, with its state and, when it is not
running, why — the first thing an operator reads when a plugin misbehaves, so a broken plugin
never hides the others and every failed row says how to run without it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from tote_core.hooks.roster import PluginInfo


def render(infos: Sequence[PluginInfo], out: TextIO) -> None:
    rows = [("NAME", "STATE", "SOURCE", "HOOKS", "REASON")]
    for p in infos:
        source = f"{p.distribution} {p.version}" + (" (built-in)" if p.builtin else "")
        rows.append((p.name, p.state, source, ",".join(p.hooks) or "-", p.reason or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:4], widths, strict=True)]
        out.write("  ".join([*cells, r[4]]).rstrip() + "\n")
    settings = [(p.name, s) for p in infos for s in p.settings]
    if settings:
        out.write("\nSETTINGS\n")
        for name, s in settings:
            out.write(f"  {s.flag}={_show(s.value)}  ({s.source}; {name})\n")
    failed = [p.name for p in infos if p.state == "failed"]
    if failed:
        names = ",".join(failed)
        out.write(f"\nto run without the failed plugin(s): --plugins-disabled {names}, "
                  f"TOTE_PLUGINS_DISABLED={names} or plugins.disabled in the config file\n")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)
