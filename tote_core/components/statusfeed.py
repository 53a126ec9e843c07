"""The status feed: a WebSocket server (trio-websocket) streaming the status board.

Served on its own port (`--status-address`, path `/status`) on every replica, in plain
HTTP: viewers reach it through the API server's service proxy
(`/api/v1/namespaces/<ns>/services/<svc>:status/proxy/status`), so Kubernetes RBAC
(`get` on `services/proxy`) decides who may watch; the feed itself has no second login.

Protocol (JSON text messages, `tote_core/structs/status.py`): `Hello`, the kill switch as
`Switch`, the snapshot as `Item`s, `Synced`, then every change (`Item` or `Switch`). Close codes:

- 1001 — the controller is shutting down or lost leadership;
- 4001 — this subscriber fell `board.QUEUE_SIZE` updates behind (reconnect for a snapshot);
- 4002 — this replica is not the leader (only the leader detects and salvages, so only its
  board has data); the service proxy picks a replica at random, so the client retries.

The server starts under `nursery.start` and runs handlers in its own handler nursery;
handshakes that do not finish within `HANDSHAKE_TIMEOUT` are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from tote_core import __version__
from tote_core.httpserver import split_address
from tote_core.status.board import StatusBoard
from tote_core.structs.status import GOING_AWAY, LAGGING, NOT_LEADER, PATH, Hello, Synced

log = logging.getLogger("tote.statusfeed")

HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0

_encoder = msgspec.json.Encoder()


@dataclass
class StatusFeed:
    board: StatusBoard
    address: str
    identity: str
    is_leader: Callable[[], bool]
    leader_identity: Callable[[], str | None]

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled; `started()` gets the bound port."""
        host, port = split_address(self.address)
        try:
            async with trio.open_nursery() as handlers:
                server = await handlers.start(partial(
                    serve_websocket, self._handle, host, port, None, handler_nursery=handlers,
                    connect_timeout=HANDSHAKE_TIMEOUT, disconnect_timeout=CLOSE_TIMEOUT))
                log.info("status feed on %s:%d%s", host, server.port, PATH)
                task_status.started(server.port)
                await trio.sleep_forever()
        finally:
            self.board.close_all("the controller is shutting down")

    async def _handle(self, request: WebSocketRequest) -> None:
        if request.path.split("?", 1)[0].rstrip("/") != PATH:
            await request.reject(404, body=f"not found; the status feed is {PATH}\n".encode())
            return
        ws = await request.accept()
        leader = self.is_leader()
        try:
            await ws.send_message(_encoder.encode(
                Hello(controller=self.identity, version=__version__, leader=leader)).decode())
            if not leader:
                await ws.aclose(NOT_LEADER, (
                    f"replica {self.identity} is not the leader "
                    f"(leader: {self.leader_identity() or 'unknown'}); retry"))
                return
            await self._stream(ws)
        except* ConnectionClosed:
            # The viewer went away (also when a send inside `_stream`'s nursery found the
            # connection dead: then it arrives in an exception group). That ends this
            # viewer's handler, never the feed or the controller.
            pass

    async def _stream(self, ws: WebSocketConnection) -> None:
        snapshot, sub = self.board.subscribe()
        switch = self.board.switch
        try:
            async with trio.open_nursery() as nursery:
                # Notice a viewer that goes away while nothing changes on the board.
                nursery.start_soon(_until_closed, ws, nursery.cancel_scope)
                if switch is not None:
                    await ws.send_message(_encoder.encode(switch).decode())
                for item in snapshot:
                    await ws.send_message(_encoder.encode(item).decode())
                await ws.send_message(_encoder.encode(Synced(items=len(snapshot))).decode())
                async for change in sub.receive:
                    await ws.send_message(_encoder.encode(change).decode())
                code = LAGGING if sub.lagged else GOING_AWAY
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose(code, sub.closed_reason[:120] or "feed ended")
                nursery.cancel_scope.cancel()
        finally:
            self.board.unsubscribe(sub)


async def _until_closed(ws: WebSocketConnection, scope: trio.CancelScope) -> None:
    try:
        while True:
            await ws.get_message()  # viewers send nothing; anything sent is ignored
    except ConnectionClosed:
        scope.cancel()
