"""Messages of the status feed (`tote status`): one JSON object per WebSocket text message.

The controller sends `Hello`, then `Switch` (the kill switch), then one `Item` per incident
or transfer it currently knows, then `Synced`; after that an `Item` whenever one changes and
a `Switch` whenever the kill switch does. `tote status --json` prints the
messages exactly as received, one per line, so scripts read the same shapes documented here.
Field names are camelCase like the SalvageRecord they mirror.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Kind = Literal["incident", "transfer"]

# Where the feed is served and its close codes: the server (components/statusfeed.py) and the
# client (`tote status`, status/command.py) both speak them.
PATH = "/status"
GOING_AWAY = 1001  # the controller is shutting down or lost leadership
LAGGING = 4001  # this subscriber fell behind (reconnect for a snapshot)
NOT_LEADER = 4002  # this replica is not the leader; the client retries another


class _Msg(msgspec.Struct, tag_field="type", rename="camel", kw_only=True, omit_defaults=True):
    pass


class Hello(_Msg, tag="hello"):
    """First message: who serves the feed (the leader holds the data)."""

    controller: str  # leader-election identity of the serving replica
    version: str  # tote version of the controller
    leader: bool


class Item(_Msg, tag="item"):
    """One incident (a failing pod as detected) or one transfer (a SalvageRecord)."""

    kind: Kind
    key: str  # stable: incidents `namespace/pod/uid`, transfers `namespace/record`
    namespace: str
    pod: str = ""
    image: str = ""
    digest: str = ""
    source: str = ""  # source node (transfers)
    target: str = ""  # failing / target node
    # incidents: the event reason (ImageSalvageable, ImageNotActionable, ...);
    # transfers: the record phase (Pending, Transferring, Completed, Failed).
    phase: str = ""
    message: str = ""
    bytes_transferred: int = 0
    bytes_total: int = 0
    retry_count: int = 0
    started_at: str = ""
    updated_at: str = ""
    completed_at: str = ""
    error: str = ""


SwitchSource = Literal["configmap", "flag", "invalid"]


class Switch(_Msg, tag="switch"):
    """The kill switch as the controller reads it (tote_core/killswitch): on or off, and
    who turned it so, when and why (`tote disable` / `tote enable` record them).

    `source`: `configmap` (the runtime ConfigMap decides), `flag` (no runtime value was
    written: the controller's `--enabled`, the install-time default, decides) or `invalid`
    (the ConfigMap's value is not a boolean: salvage stays OFF; `problem` says why).
    """

    enabled: bool
    source: SwitchSource
    config_map: str = ""  # namespace/name of the runtime ConfigMap
    changed_by: str = ""  # the user `tote disable/enable` authenticated as
    changed_at: str = ""  # RFC 3339 UTC
    reason: str = ""
    problem: str = ""


class Synced(_Msg, tag="synced"):
    """Every item known when the subscriber connected has been sent."""

    items: int


Message = Hello | Switch | Item | Synced

FINISHED_PHASES = frozenset({"Completed", "Failed"})
