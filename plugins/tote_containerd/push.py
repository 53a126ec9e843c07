"""Built-in `push_image`: the node's agent uploads an image to a registry.

The registry plugin decides what to push where and with which `Authorization`; this module
only carries that to the agent of `request.node` (Push RPC, controller identity over mTLS)
and maps the agent's errors onto `RegistryError` reasons the caller acts on: `node` (that
node cannot serve the image: agent down, image incomplete — another node may), or the
registry's own `unauthorized` / `unreachable` / `error` (no other node would do better),
as `errors.TABLE` says (`errors.for_push`).
"""

from __future__ import annotations

import math

import trio

from tote_containerd.agent import api
from tote_containerd.agent import errors as e
from tote_containerd.agents import Agents
from tote_core.errors import RetryLater
from tote_core.hooks.types import PushRequest, PushResult

DEFAULT_DEADLINE = 1800.0


async def push_image(request: PushRequest, agents: Agents) -> PushResult:
    """Ask `request.node`'s agent to push."""
    left = trio.current_effective_deadline() - trio.current_time()
    deadline = left if math.isfinite(left) else DEFAULT_DEADLINE
    try:
        async with agents.agent(request.node) as client:
            r = await client.push(api.PushRequest(
                digest=request.digest, registry_url=request.registry_url,
                repository=request.repository, tag=request.tag,
                authorization=request.authorization, ca_pem=request.ca_pem,
                insecure=request.insecure, mount_from=list(request.mount_from)),
                deadline=max(1.0, deadline))
    except (e.AgentError, RetryLater) as exc:
        raise e.for_push(exc, request.node) from exc
    return PushResult(
        pushed_digest=r.pushed_digest, index_pushed=r.index_pushed,
        manifests=tuple(r.manifests), blobs_total=r.blobs_total,
        blobs_uploaded=r.blobs_uploaded, blobs_skipped=r.blobs_skipped,
        blobs_mounted=r.blobs_mounted, bytes_uploaded=r.bytes_uploaded, note=r.note,
        platform=r.platform)
