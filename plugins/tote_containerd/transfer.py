"""The `transfer` hook's work: check the source really holds the whole platform chain for
the target's platform — as blobs, or as unpacked snapshots when it discarded its layer
blobs (snapshot mode, unless `--snapshot-salvage=false`) — mint a short-lived single-use
token for (digest, source, target), ask the target agent to import from the source, and
relay its progress.

Errors: `RetryLater` (source or agent unreachable, stream cut, corrupt bytes from that
source — another source may work) and `PermanentError` (too_large, layers_discarded,
platform_missing, snapshot_salvage_disabled, layer_unverified, unauthorized,
invalid_request); agent errors become these by `errors.TABLE` (`errors.for_salvage`).
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from tote_containerd.agent import errors as e
from tote_containerd.agent.api import ImportProgress, ImportRequest
from tote_containerd.agents import Agents
from tote_core.errors import PermanentError, RetryLater
from tote_core.hooks.types import (
    ProgressCallback,
    TransferProgress,
    TransferRequest,
    TransferResult,
)

log = logging.getLogger("tote.plugin.containerd")

TOKEN_TTL = 120.0  # the token is redeemed once, when the target opens its session
Mode = Literal["blobs", "snapshots", "mixed"]


async def run_transfer(request: TransferRequest, progress: ProgressCallback, agents: Agents
                       ) -> TransferResult:
    started = time.monotonic()
    source_endpoint = agents.endpoint(request.source_node)
    target_endpoint = agents.endpoint(request.target_node)
    signer = agents.signer()
    try:
        async with agents.at(target_endpoint) as target:
            platform = (await target.health()).platform
    except e.AgentError as exc:
        raise e.for_salvage(exc, f"target agent {request.target_node}") from exc
    try:
        async with agents.at(source_endpoint) as source:
            info = await source.inspect(request.digest, platform)
    except e.AgentError as exc:
        raise e.for_salvage(exc, f"source {request.source_node}") from exc
    if not info.complete:
        if info.layers_discarded and info.unpacked and not request.allow_snapshots:
            raise PermanentError(
                f"source {request.source_node} discarded the layer blobs of "
                f"{request.digest} and snapshot salvage is turned off "
                "(--snapshot-salvage=false)", reason="snapshot_salvage_disabled")
        if info.layers_discarded and not info.unpacked:
            raise PermanentError(f"source {request.source_node}: {info.reason}",
                                 reason="layers_discarded")
        if not info.layers_discarded:
            raise RetryLater(f"source {request.source_node} cannot serve {request.digest}: "
                             f"{info.reason}", reason="source_unavailable")
    token = signer.mint(digest=request.digest, source=request.source_node,
                        target=request.target_node, ttl=TOKEN_TTL)

    async def relay(p: ImportProgress) -> None:
        await progress(TransferProgress(
            bytes_total=p.bytes_total, bytes_transferred=p.bytes_transferred,
            blobs_total=p.blobs_total, blobs_skipped=p.blobs_skipped))

    try:
        async with agents.at(target_endpoint) as target:
            done = await target.import_from(ImportRequest(
                source_node=request.source_node, source_endpoint=source_endpoint,
                token=token, digest=request.digest, names=[request.image_ref],
                max_bytes=request.max_bytes, platform=platform,
                allow_snapshots=request.allow_snapshots,
                require_verified=request.require_verified, pin=request.pin), relay)
    except e.AgentError as exc:
        raise e.for_salvage(exc, f"import {request.source_node} → {request.target_node}"
                                ) from exc
    log.info("transferred %s %s → %s: %d bytes moved, %d blobs skipped, mode %s%s",
             request.digest, request.source_node, request.target_node, done.bytes_total,
             done.blobs_skipped, done.mode,
             f" ({done.layers_verified} of {done.layers_regenerated} regenerated layers match "
             "their diff IDs)" if done.layers_regenerated else "")
    mode: Mode = "snapshots" if done.mode == "snapshots" else \
        "mixed" if done.mode == "mixed" else "blobs"
    return TransferResult(bytes_total=done.bytes_total,
                          bytes_transferred=done.bytes_transferred - done.bytes_resumed,
                          blobs_skipped=done.blobs_skipped,
                          duration_seconds=time.monotonic() - started, mode=mode,
                          layers_regenerated=done.layers_regenerated,
                          layers_verified=done.layers_verified, pinned=done.pinned)
