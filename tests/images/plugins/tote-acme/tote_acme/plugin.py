"""The `acme` plugin: typed settings of its own and a `notify` that logs one line.

Its settings come through the `settings_type` hook, so they can be given as flags
(`--acme-greeting`, `--acme-events`), variables (`TOTE_ACME_GREETING`), the config file
(`plugins: {acme: {greeting: ...}}`) or the chart (`plugins.config.acme.greeting`). Each
notification it is given is logged as `acme-notify {json}` with the greeting, so a test (or
an operator) sees from the controller's log alone that the plugin was loaded, configured
and called.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

import msgspec

from tote_core.hooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from tote_core.hooks.context import PluginContext
    from tote_core.hooks.types import Notification

log = logging.getLogger("tote_acme")

EVENTS = ("detected", "salvaged", "failed", "pushed")


class AcmeSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What `acme` can be told: how to greet, and which notifications to log."""

    greeting: str = "hello"
    events: list[str] = msgspec.field(default_factory=list)

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "greeting": "text put in front of every logged notification",
        "events": f"notification types to log (any of {', '.join(EVENTS)}); empty = all",
    }

    def __post_init__(self) -> None:
        unknown = sorted(set(self.events) - set(EVENTS))
        if unknown:
            raise ValueError(f"events: unknown {', '.join(unknown)} "
                             f"(known: {', '.join(EVENTS)})")
        if not self.greeting.strip():
            raise ValueError("greeting: must not be empty")


class AcmePlugin:
    def __init__(self) -> None:
        self.settings = AcmeSettings()

    @hookimpl
    def settings_type(self) -> type[msgspec.Struct]:
        return AcmeSettings

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        self.settings = context.settings_for(AcmeSettings)
        log.info("acme-configured %s", msgspec.json.encode(self.settings).decode())

    @hookimpl
    def notify(self, notification: Notification) -> None:
        if self.settings.events and notification.type not in self.settings.events:
            return
        line = {
            "greeting": self.settings.greeting,
            "events": self.settings.events,
            "type": notification.type,
            "pod": f"{notification.namespace}/{notification.pod_name}",
            "image": notification.image_ref,
            "digest": notification.digest,
            "source_node": notification.source_node,
            "target_node": notification.target_node,
            "error": notification.error,
        }
        log.info("acme-notify %s", msgspec.json.encode(line).decode())
