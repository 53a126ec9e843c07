"""The default `select_source` policy: ready nodes, same zone first, fewest active transfers.

A plugin rather than engine code so that it can be replaced (a third-party `select_source`
registered later, or `tryfirst`, answers first; a wrapper can reorder this answer) or turned
off (`plugins.disabled: [source-policy]`). What must never be off stays in core: with no
answer from any plugin the salvage still tries ready candidates, by name.

Same zone first because cross-zone traffic is slower and often billed; fewest active
transfers so one holder is not asked to feed every target at once; name last so the order
is stable between attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import msgspec

from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import NodeInfo

if TYPE_CHECKING:
    from tote_core.hooks.context import PluginContext


class SourcePolicySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`--source-policy-*`."""

    zone_first: bool = True

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "zone_first": "prefer sources in the target's zone (topology.kubernetes.io/zone); "
                      "false where zones cost nothing extra (default true)",
    }


def order(candidates: Sequence[NodeInfo], *, target_zone: str | None) -> list[str]:
    """Ready candidates: same zone as the target first, then fewest active transfers, name."""
    ready = [c for c in candidates if c.ready]
    return [
        c.name
        for c in sorted(
            ready,
            key=lambda c: (
                0 if target_zone and c.zone == target_zone else 1,
                c.active_transfers,
                c.name,
            ),
        )
    ]


class SourcePolicyPlugin:
    """Everything it weighs arrives with the call; its one setting with `configure`."""

    def __init__(self) -> None:
        self.settings = SourcePolicySettings()

    @hookimpl
    def settings_type(self) -> type[SourcePolicySettings]:
        return SourcePolicySettings

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        self.settings = context.settings_for(SourcePolicySettings)

    @hookimpl
    def select_source(self, candidates: list[NodeInfo], target: NodeInfo) -> list[str]:
        return order(candidates, target_zone=target.zone if self.settings.zone_first else None)
