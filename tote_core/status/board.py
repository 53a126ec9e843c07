"""The status board: what the controller knows right now about incidents and transfers.

Detection and salvage publish `Item`s here (synchronously, never blocking); the status feed
(`tote_core/components/statusfeed.py`) subscribes. The board owns the fan-out so neither
side knows about the other: publishing costs one dict write plus one `send_nowait` per
subscriber, so a slow or stuck viewer can never delay detection or a transfer.

Each subscriber gets a bounded channel (`QUEUE_SIZE`). A subscriber that falls that far
behind is dropped: its channel is closed and `Subscription.closed_reason` says why, which
the feed passes on as the WebSocket close reason.

The kill switch (`Switch`, tote_core/killswitch) is on the board too: one value, replaced
when it changes and sent to every subscriber like an item, so `tote status` shows "salvage
DISABLED by ..." from the same feed.

Finished items (transfers Completed/Failed, incidents) stay visible for `RETAIN` seconds
so a viewer that connects right after a salvage still sees it; at most `MAX_ITEMS` are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from tote_core.structs.status import FINISHED_PHASES, Item, Switch

log = logging.getLogger("tote.status")

QUEUE_SIZE = 256  # messages a subscriber may be behind before it is dropped
RETAIN = 600.0  # seconds a finished item stays on the board
MAX_ITEMS = 1000


@dataclass
class Subscription:
    """One viewer: a bounded receive channel plus, once dropped, the reason."""

    receive: trio.MemoryReceiveChannel[Item | Switch]
    _send: trio.MemorySendChannel[Item | Switch]
    closed_reason: str = ""
    lagged: bool = False


@dataclass
class StatusBoard:
    clock: Callable[[], float] = time.monotonic
    queue_size: int = QUEUE_SIZE
    retain: float = RETAIN
    max_items: int = MAX_ITEMS
    items: dict[str, Item] = field(default_factory=dict)
    switch: Switch | None = None  # the kill switch, once the controller has read it
    _touched: dict[str, float] = field(default_factory=dict)
    _subscribers: list[Subscription] = field(default_factory=list)
    dropped: int = 0  # subscribers closed for lagging (tests, logs)
    _pruned_at: float = 0.0

    def publish(self, item: Item) -> None:
        """Record `item` (replacing the one with the same key) and fan it out. Never blocks."""
        if self.items.get(item.key) == item:
            return
        self.items[item.key] = item
        self._touched.pop(item.key, None)  # re-insert: `_touched` is kept oldest first
        self._touched[item.key] = self.clock()
        self._prune()
        self._fan_out(item)

    def publish_switch(self, switch: Switch) -> None:
        """The kill switch as read now; fanned out only when it changed. Never blocks."""
        if switch == self.switch:
            return
        self.switch = switch
        self._fan_out(switch)

    def _fan_out(self, message: Item | Switch) -> None:
        for sub in list(self._subscribers):
            try:
                sub._send.send_nowait(message)
            except trio.WouldBlock:
                self._drop(sub, f"subscriber fell {self.queue_size} updates behind; "
                                "reconnect to get a fresh snapshot")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(sub)

    def get(self, key: str) -> Item | None:
        return self.items.get(key)

    def subscribe(self) -> tuple[list[Item], Subscription]:
        """The current snapshot and a subscription to every later change (the kill switch
        as it is now is `self.switch`, read in the same step).

        Synchronous, so no publish can fall between the snapshot and the subscription.
        """
        self._prune(force=True)
        send, receive = trio.open_memory_channel[Item | Switch](self.queue_size)
        sub = Subscription(receive=receive, _send=send)
        self._subscribers.append(sub)
        return list(self.items.values()), sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)
        sub._send.close()

    def close_all(self, reason: str) -> None:
        """End every subscription (controller shutting down, leadership lost)."""
        for sub in list(self._subscribers):
            self._drop(sub, reason, lagging=False)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _drop(self, sub: Subscription, reason: str, *, lagging: bool = True) -> None:
        sub.closed_reason = reason
        sub.lagged = lagging
        if lagging:
            self.dropped += 1
            log.info("status feed: dropping a subscriber: %s", reason)
        self.unsubscribe(sub)

    def _prune(self, *, force: bool = False) -> None:
        """Drop expired finished items (at most once a second) and the oldest over the cap.

        `_touched` is in touch order, oldest first, so neither step scans the whole board:
        publish stays O(1) on the detection path even with `max_items` on the board.
        """
        while len(self.items) > self.max_items:
            oldest = next(iter(self._touched))
            del self.items[oldest]
            del self._touched[oldest]
        now = self.clock()
        if not force and now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        expired = []
        for key, touched in self._touched.items():
            if now - touched <= self.retain:
                break  # every later key was touched more recently
            item = self.items[key]
            if item.kind == "incident" or item.phase in FINISHED_PHASES:
                expired.append(key)
        for key in expired:
            del self.items[key]
            del self._touched[key]
