"""Everything tote relies on inside grpclib (and h2/hyperframe) that is not its public API.

grpclib exposes no way to raise the HTTP/2 max frame size, to learn whether a stream's
trailers were read, or to recover the status a server sent just before resetting a stream;
tote needs all three (throughput, and correct errors from gRPC-Go servers such as
containerd). Reaching into private attributes is fragile, so it happens here only, for the
grpclib versions listed in `SUPPORTED`; `install()` checks that the installed version has
what is used and refuses to start otherwise, naming the version, instead of failing in the
middle of a transfer. `tests/integration/containerd/test_grpc_shim.py` runs `self_test()`
against every supported version.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from tote_core.errors import ConfigError

log = logging.getLogger("tote.agent.grpc")

# The grpclib releases the private attributes below were read from (pyproject: >=0.4.7,<0.5).
SUPPORTED = ("0.4.7", "0.4.8", "0.4.9")

# Advertised on every grpclib connection (HTTP/2's default is 16 KiB): a 4 MiB message then
# costs 4 DATA frames to parse instead of 256.
MAX_FRAME = 1 << 20

# Private attributes read, by the class that has them (checked by `install`).
_STREAM_ATTRS = ("_recv_trailing_metadata_done", "_send_request_done", "_cancel_done",
                 "_maybe_raise")
# Read by `advertised_max_frame` only (tests): Channel._protocol, H2Protocol.connection.
_PATCHED = "_tote_patched"


class UnsupportedGrpclib(ConfigError):
    """The installed grpclib lacks something this module uses (an installation problem:
    one line at start-up, like any configuration error)."""


def grpclib_version() -> str:
    return metadata.version("grpclib")


def h2_config() -> Any:
    """The one grpclib HTTP/2 configuration (agent server, agent client, containerd client):
    flow-control windows large enough (64 MiB per connection, 16 MiB per stream) that blob
    streams are not held back by HTTP/2's 64 KiB default window waiting for updates."""
    import grpclib.config

    return grpclib.config.Configuration(
        http2_connection_window_size=64 * 1024 * 1024,
        http2_stream_window_size=16 * 1024 * 1024,
    )


def install() -> None:
    """Apply the process-wide tweaks once (idempotent); raise `UnsupportedGrpclib` when the
    installed grpclib does not have what the shim uses."""
    from grpclib import protocol
    from grpclib.client import Stream
    from hyperframe import frame

    missing = [f"Stream.{a}" for a in _STREAM_ATTRS if not hasattr(Stream, a)]
    if not hasattr(protocol.H2Protocol, "connection_made"):
        missing.append("H2Protocol.connection_made")
    if not hasattr(frame.DataFrame, "_body_repr"):
        missing.append("hyperframe DataFrame._body_repr")
    if missing:
        raise UnsupportedGrpclib(
            f"grpclib {grpclib_version()} lacks {', '.join(missing)}; tote supports grpclib "
            f"{', '.join(SUPPORTED)}")
    if getattr(protocol.H2Protocol, _PATCHED, False):
        return
    _cheap_data_frame_repr(frame)
    _larger_frames(protocol)
    setattr(protocol.H2Protocol, _PATCHED, True)
    if grpclib_version() not in SUPPORTED:
        log.warning("grpclib %s is not among the versions tote was tested with (%s)",
                    grpclib_version(), ", ".join(SUPPORTED))


def _cheap_data_frame_repr(frame: Any) -> None:
    """h2 formats every received frame with repr(); a DATA frame's repr hex-encodes its whole
    payload. Make that repr cheap (it is only used for trace logging)."""

    def _body_repr(self: Any) -> str:
        return f"<{len(self.data)} bytes>"

    frame.DataFrame._body_repr = _body_repr


def _larger_frames(protocol: Any) -> None:
    """Advertise `MAX_FRAME` on every grpclib connection, client and server."""
    from h2.settings import SettingCodes

    original = protocol.H2Protocol.connection_made

    def connection_made(self: Any, transport: Any) -> None:
        original(self, transport)
        self.connection._connection.update_settings({SettingCodes.MAX_FRAME_SIZE: MAX_FRAME})
        self.connection.flush()

    protocol.H2Protocol.connection_made = connection_made


# ---------------------------------------------------------------- client stream internals
def trailers_read(stream: Any) -> bool:
    """Whether grpclib already read this client stream's trailing metadata."""
    return bool(stream._recv_trailing_metadata_done)


def needs_reset(stream: Any) -> bool:
    """Whether the request was sent and the stream not yet cancelled: only such a stream
    holds the server (and HTTP/2 window) until it is reset."""
    return bool(stream._send_request_done and not stream._cancel_done)


def received_status(stream: Any) -> BaseException | None:
    """The error status the server sent before it reset the stream, if it sent one."""
    import grpclib.exceptions

    try:
        stream._maybe_raise()
    except grpclib.exceptions.GRPCError as exc:
        return exc
    return None


def advertised_max_frame(channel: Any) -> int:
    """The max frame size a connected grpclib channel advertised to its server."""
    return int(channel._protocol.connection._connection.local_settings.max_frame_size)
