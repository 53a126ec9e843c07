"""Import leases kept for a resume that will not come are released.

A failed transfer keeps its lease (`tote-import-…`, labelled with the digest) so a retry
resumes its ingests. When the image becomes whole on the node by another way — kubelet
pulled it once the registry came back — or releasing failed after an import completed
(containerd restarting), nothing will resume it, and the lease kept the ingests it held from
containerd's GC for an hour. The soak found one such lease after an hour of churn. The
target agent now checks its kept leases every minute and releases those whose image is
whole there. Real containerd 2.x; the check is called directly, as the agent's loop does.

Tried: a lease whose image is whole (released); one whose image is not on the node (kept:
a resume may still come); one of an import running now (kept); a lease labelled like an
import but not named as tote's (kept: not ours).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tote_containerd.agent.asyncio_bridge import open_bridge
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.content import LocalContent
from tote_containerd.agent.transfer_target import IMPORT_LABEL, TransferTarget

from tests.cluster.containerd_env import Env
from tests.cluster.images import layered_image

pytestmark = pytest.mark.integration

ABSENT = "sha256:" + "e" * 64
RUNNING = "sha256:" + "f" * 64


def _no_peer(endpoint: str) -> object:
    raise AssertionError("the lease check never opens a peer")


async def test_kept_leases_of_whole_images_are_released(env: Env, tmp_path: Path) -> None:
    node = env.nodes["b"]
    img = layered_image("docker.io/tote/lease-release:v1", [64 * 1024], seed=2610)
    node.import_archive(img.write_archive(tmp_path / "img.tar"))
    whole = f"tote-import-{img.digest.split(':', 1)[1][:32]}"
    leases = {whole: img.digest, "tote-import-absent": ABSENT,
              "tote-import-running": RUNNING, "someone-elses": img.digest}
    async with open_bridge() as bridge:
        cd = ContainerdClient(bridge, node.socket)
        await cd.connect()
        try:
            for lease, digest in leases.items():
                await cd.create_lease(lease, expire_in=3600, labels={IMPORT_LABEL: digest})
            target = TransferTarget(LocalContent(cd, "b"), platform="linux/amd64",
                                    open_peer=_no_peer)  # type: ignore[arg-type]
            target._import_locks[RUNNING] = object()  # type: ignore[assignment]
            assert await target.release_finished_imports() == [whole]
            left = {lease for lease, _ in await cd.list_leases()}
            assert whole not in left
            assert {"tote-import-absent", "tote-import-running", "someone-elses"} <= left
            assert await target.release_finished_imports() == []  # nothing more to do
        finally:
            for lease in leases:
                await cd.delete_lease(lease)
            await cd.close()
