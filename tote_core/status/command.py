"""`tote status [--follow] [--json]`: the controller's status feed, for people and scripts.

The feed is reached with the user's kubeconfig through the API server's service proxy
(`tote_core/kube/proxy.py`), so RBAC decides who may watch: `get` on `services/proxy` for
the controller's Service and feed port (resourceName `tote-controller:status`).
`--url ws://host:port/status` connects directly instead (a controller run outside the
cluster, or a port-forward).

The kill switch comes first: "salvage DISABLED by alice since <time>: <reason>" (a banner
in the people view, a `switch` message in `--json`).

Without `--follow` the snapshot is printed and the command exits; with it, changes stream
until the feed ends. A close reason from the controller becomes the exit message; the exit
status is 0 for a normal end and 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TextIO

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from tote_core.errors import ConfigError
from tote_core.kube import config as kube_config
from tote_core.kube import proxy
from tote_core.structs.status import NOT_LEADER, PATH, Hello, Item, Message, Switch, Synced

CONNECT_TIMEOUT = 15.0
NOT_LEADER_RETRIES = 8  # the service proxy picks a replica at random; find the leader

_decoder = msgspec.json.Decoder(Message)
_encoder = msgspec.json.Encoder()




_KNOWN_TYPES = frozenset({"hello", "switch", "item", "synced"})
_peek = msgspec.json.Decoder(dict[str, object])


def _decode(raw: str | bytes) -> Message | None:
    """One feed message; None for a `type` this CLI does not know (a newer controller's), so
    an older `tote status` keeps working against it. Anything else malformed raises."""
    try:
        message: Message = _decoder.decode(raw)
    except msgspec.ValidationError:
        kind = _peek.decode(raw).get("type")
        if isinstance(kind, str) and kind not in _KNOWN_TYPES:
            return None
        raise
    return message


class FeedError(Exception):
    """The feed could not be watched; the message is the command's exit message."""


@dataclass
class Watch:
    """What has been received so far; `render` draws it (the rich view or JSON lines)."""

    hello: Hello | None = None
    switch: Switch | None = None  # the kill switch (a banner when salvage is off)
    items: dict[str, Item] = field(default_factory=dict)
    synced: bool = False

    def apply(self, message: Message) -> None:
        if isinstance(message, Hello):
            self.hello = message
        elif isinstance(message, Switch):
            self.switch = message
        elif isinstance(message, Item):
            self.items[message.key] = message
        elif isinstance(message, Synced):
            self.synced = True


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tote status", description=__doc__.split("\n\n")[0])
    p.add_argument("--follow", "-f", action="store_true", help="keep streaming changes")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--kubeconfig", default="", help="default: $KUBECONFIG, ~/.kube/config")
    p.add_argument("--namespace", "-n", default="tote-system",
                   help="the controller's namespace (default tote-system)")
    p.add_argument("--service", default="tote-controller",
                   help="the controller's Service (default tote-controller)")
    p.add_argument("--port", default="status",
                   help="the Service port (name or number) of the feed (default status)")
    p.add_argument("--url", default="",
                   help="connect to ws://HOST:PORT/status directly instead of the proxy")
    return p.parse_args(list(argv))


def opener(args: argparse.Namespace) -> Callable[[], AbstractAsyncContextManager[
        WebSocketConnection]]:
    """A function that opens one connection to the feed (called again on retries)."""
    if args.url:
        return lambda: open_websocket_url(args.url, connect_timeout=CONNECT_TIMEOUT)
    cfg = kube_config.load(args.kubeconfig)
    path = proxy.service_proxy_path(args.namespace, args.service, args.port, PATH)
    url = proxy.websocket_url(cfg, path)

    class _Open:
        async def __aenter__(self) -> WebSocketConnection:
            self._cm = open_websocket_url(
                url, proxy.websocket_ssl(cfg), extra_headers=await proxy.auth_headers(cfg),
                connect_timeout=CONNECT_TIMEOUT)
            return await self._cm.__aenter__()

        async def __aexit__(self, *exc: object) -> bool | None:
            return await self._cm.__aexit__(*exc)  # type: ignore[arg-type]

    return _Open


async def watch(open_feed: Callable[[], AbstractAsyncContextManager[WebSocketConnection]],
                *, follow: bool, on_message: Callable[[Watch, Message], None]) -> str:
    """Receive the feed into a `Watch`; returns the exit message ("" = a normal end)."""
    for _ in range(NOT_LEADER_RETRIES):
        state = Watch()
        try:
            async with open_feed() as ws:
                while True:
                    raw = await ws.get_message()
                    message = _decode(raw)
                    if message is None:
                        continue  # a kind of message a newer controller sends
                    state.apply(message)
                    on_message(state, message)
                    if isinstance(message, Synced) and not follow:
                        return ""
        except ConnectionClosed as closed:
            reason = closed.reason
            if reason is not None and reason.code == NOT_LEADER:
                await trio.sleep(0.2)
                continue
            if reason is None or reason.code == 1000:
                return ""
            return f"the controller closed the feed: {reason.reason or reason.name} " \
                   f"(code {reason.code})"
        except ConnectionRejected as rej:
            text = proxy.rejection_text(rej.status_code, rej.body)
            if rej.status_code == 403:
                text += ("\n(watching needs RBAC `get` on `services/proxy` with the "
                         "resourceName quoted above, SERVICE:PORT such as "
                         "tote-controller:status; see docs/operations.md)")
            raise FeedError(f"the API server refused the status feed: {text}") from rej
        except (HandshakeError, OSError) as exc:
            cause = exc.__cause__ or exc.__context__ or exc
            raise FeedError(f"cannot reach the status feed: {type(cause).__name__}: {cause}"
                            ) from exc
        except msgspec.DecodeError as exc:
            raise FeedError(f"the feed sent something that is not a status message: {exc}"
                            ) from exc
    raise FeedError(f"no leader found after {NOT_LEADER_RETRIES} attempts "
                    "(every replica said it is not the leader)")


def run(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    args = parse(argv)
    try:
        open_feed = opener(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc

    if args.json:
        def on_message(state: Watch, message: Message) -> None:
            out.write(_encoder.encode(message).decode() + "\n")
            out.flush()

        try:
            end = trio.run(lambda: watch(open_feed, follow=args.follow,
                                         on_message=on_message))
        except FeedError as exc:
            print(f"tote status: {exc}", file=sys.stderr)
            return 1
        if end:
            print(f"tote status: {end}", file=sys.stderr)
        return 1 if end else 0
    return _run_rich(args, open_feed, out)


def _run_rich(args: argparse.Namespace,
              open_feed: Callable[[], AbstractAsyncContextManager[WebSocketConnection]],
              out: TextIO) -> int:
    from rich.live import Live

    from tote_core.status.view import render
    from tote_core.terminal import console as make_console

    console = make_console(out)
    live: Live | None = None

    def on_message(state: Watch, message: Message) -> None:
        nonlocal live
        if not state.synced:
            return
        if not args.follow:
            console.print(render(state.hello, state.items.values(), switch=state.switch))
            return
        if live is None:
            live = Live(console=console, refresh_per_second=4, transient=False)
            live.start()
        live.update(render(state.hello, state.items.values(), switch=state.switch))

    try:
        end = trio.run(lambda: watch(open_feed, follow=args.follow, on_message=on_message))
    except FeedError as exc:
        end = str(exc)
    finally:
        if live is not None:
            live.stop()
    if end:  # the reason goes to stderr, as with --json: stdout holds only the view
        make_console(sys.stderr).print(f"tote status: {end}", style="red", markup=False,
                                       highlight=False)
    return 1 if end else 0
