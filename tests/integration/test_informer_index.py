"""The informer's indices against a real API server: kept current through list, watch
ADDED/DELETED, and a relist.

Tried: pods created before the informer lists (indexed by the list), created and deleted
while it watches (indexed and unindexed by watch events), and a forced relist (the index is
rebuilt, not appended to). The namespace index is what agent discovery uses instead of a
scan of every pod (issue 12: at 10 000 pods a 500-node fan-out scanned 5 million pods).
"""

from __future__ import annotations

import trio

from tests.cluster.controlplane import ControlPlane
from tests.cluster.objects import create_pod
from tote_core.kube import config as kube_config
from tote_core.kube.cache import NAMESPACE_INDEX
from tote_core.kube.client import KubeClient, resource_path
from tote_core.kube.informer import Informer
from tote_core.structs.kube import Pod

IMAGE = "127.0.0.1:5999/index/app:v1"


def _names(informer: Informer[Pod], namespace: str) -> set[str]:
    return {p.metadata.name for p in informer.by_index(NAMESPACE_INDEX, namespace)}


async def _wait_for(informer: Informer[Pod], namespace: str, want: set[str]) -> None:
    with trio.fail_after(60):
        while _names(informer, namespace) != want:
            await trio.sleep(0.1)


def test_namespace_index_follows_list_watch_and_relist(
    control_plane: ControlPlane, test_namespace: str
) -> None:
    cp, ns = control_plane, test_namespace
    create_pod(cp, ns, "before", IMAGE, node="n-index")

    async def main() -> None:
        kube = KubeClient(kube_config.load(str(cp.admin_kubeconfig)))
        informer: Informer[Pod] = Informer(
            kube, resource_path("v1", "pods"), Pod, name="pods", watch_timeout=30
        )
        informer.add_index(NAMESPACE_INDEX, lambda pod: (pod.metadata.namespace,))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(informer.run)
                assert _names(informer, ns) == {"before"}
                await trio.to_thread.run_sync(
                    lambda: create_pod(cp, ns, "during", IMAGE, node="n-index"))
                await _wait_for(informer, ns, {"before", "during"})
                await trio.to_thread.run_sync(
                    lambda: cp.kubectl("delete", "pod", "before", "-n", ns,
                                       "--grace-period=0", "--force", "--wait=false"))
                await _wait_for(informer, ns, {"during"})
                await informer._relist()
                assert _names(informer, ns) == {"during"}
                assert informer.by_index(NAMESPACE_INDEX, "no-such-namespace") == []
                # Every indexed key is a live object: no stale entries after the churn.
                indexed = set().union(*informer._indices[NAMESPACE_INDEX][1].values())
                assert indexed == set(informer.items)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await kube.aclose()

    trio.run(main)
