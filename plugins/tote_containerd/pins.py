"""Built-in `unpin_image`: the node's agent clears CRI's pin label from one digest's records.

Salvaged images are pinned on the target node (`io.cri-containerd.pinned=pinned`, set by the
target agent at import) so kubelet's image GC keeps them while the registry cannot serve
them. The reaper asks to unpin once the registry serves the digest again or the record
expires; this module carries that to the node's agent (SetPinned, controller identity over
mTLS), naming only the digest, so records of other images — pinned by tote or by anyone
else — are never touched.
"""

from __future__ import annotations

import logging
import math

import trio

from tote_containerd.agent import errors as e
from tote_containerd.agents import Agents
from tote_core.errors import ToteError

log = logging.getLogger("tote.plugin.containerd.pins")

DEFAULT_DEADLINE = 10.0


async def unpin_image(node: str, digest: str, agents: Agents) -> bool:
    """True once no record of `digest` on `node` carries the pin label (also when the node
    holds no record of it any more); False when the agent cannot be reached or refuses."""
    left = trio.current_effective_deadline() - trio.current_time()
    deadline = left if math.isfinite(left) else DEFAULT_DEADLINE
    try:
        async with agents.agent(node, deadline) as agent:
            try:
                changed = await agent.set_pinned(False, digest=digest)
            except e.InvalidArgument:
                # "nothing to (un)pin": no record names the digest (removed by hand).
                if any(r.digest == digest for r in await agent.list_images(digest)):
                    raise
                log.info("no image record of %s left on %s: nothing to unpin", digest, node)
                return True
    except (ToteError, e.AgentError, OSError) as exc:
        log.warning("could not unpin %s on %s: %s", digest, node, exc)
        return False
    if changed:
        log.info("unpinned image records on %s: %s", node, ", ".join(changed))
    return True
