"""Describing plugin settings for `tote plugins`: one row per setting — flag, variable, type,
default, value and where the value came from — built from what start-up parsed."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import msgspec

from tote_core.settings_loader import Group


class SettingInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One plugin setting as `tote plugins --json` shows it."""

    name: str  # the field
    flag: str
    env: str
    type: str
    default: Any
    value: Any
    source: str  # "default", "the command line", "TOTE_…", "config file …"
    help: str = ""


def describe(groups: Mapping[str, Group], values: Mapping[str, msgspec.Struct],
             sources: Mapping[str, Mapping[str, str]]) -> dict[str, tuple[SettingInfo, ...]]:
    """Per plugin, its settings' rows; `values` lacks a plugin whose settings did not
    validate (its rows show the defaults and no value)."""
    out: dict[str, tuple[SettingInfo, ...]] = {}
    for name, group in groups.items():
        value = values.get(name)
        source = sources.get(name, {})
        rows = []
        for f in group.fields():
            default = getattr(group.cls(), f.name)
            rows.append(SettingInfo(
                name=f.name, flag=group.flag(f.name), env=group.env(f.name),
                type=_type_name(group.cls, f.name), default=_plain(default),
                value=_plain(getattr(value, f.name)) if value is not None else None,
                source=source.get(f.name, "default"), help=group.help(f.name) or ""))
        out[name] = tuple(rows)
    return out


def _type_name(cls: type[msgspec.Struct], name: str) -> str:
    hint = typing.get_type_hints(cls, include_extras=True).get(name)
    text = str(hint).replace("typing.", "")
    if "tote_parse" in text:
        return "Duration" if "duration" in text else "Size"
    return getattr(hint, "__name__", text) if not typing.get_args(hint) else text


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value) if value is not None else None
