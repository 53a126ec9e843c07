"""The informer caches the controller keeps: pods, nodes, namespaces, its ConfigMap."""

from __future__ import annotations

import gc
from typing import Any

import trio

from tote_core import killswitch
from tote_core.detect import inventory
from tote_core.detect.reference import ImageReference
from tote_core.kube.client import KubeClient, resource_path
from tote_core.kube.informer import Informer
from tote_core.structs.kube import (
    ConfigMap,
    Namespace,
    Node,
    Pod,
    share_node_strings,
    share_pod_strings,
)
from tote_core.structs.status import Switch

NAMESPACE_INDEX = "namespace"


class Caches:
    def __init__(self, client: KubeClient, *, namespace: str, config_map: str) -> None:
        self.pods: Informer[Pod] = Informer(client, resource_path("v1", "pods"), Pod, name="pods",
                                            compact=share_pod_strings)
        # Agent discovery (and anything else per namespace) without scanning every pod.
        self.pods.add_index(NAMESPACE_INDEX, lambda pod: (pod.metadata.namespace,))
        self.nodes: Informer[Node] = Informer(
            client, resource_path("v1", "nodes"), Node, name="nodes", compact=share_node_strings
        )
        self.nodes.add_index(inventory.DIGEST_INDEX, inventory.digests_of)
        self.nodes.add_index(inventory.TAG_INDEX, inventory.tags_of)
        self.namespaces: Informer[Namespace] = Informer(
            client, resource_path("v1", "namespaces"), Namespace, name="namespaces"
        )
        self.config: Informer[ConfigMap] = Informer(
            client,
            resource_path("v1", "configmaps", namespace),
            ConfigMap,
            name="configmap",
            field_selector=f"metadata.name={config_map}",
        )
        self.namespace = namespace
        self.config_map = config_map

    @property
    def informers(self) -> list[Informer[Any]]:
        return [self.config, self.namespaces, self.nodes, self.pods]

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def node(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def nodes_with_digest(self, digest: str) -> list[str]:
        """Names of nodes whose status lists `repo@digest` (sorted), from the index."""
        return sorted(self.nodes.keys_by_index(inventory.DIGEST_INDEX, digest))  # key = name

    def resolve_tag(self, ref: ImageReference) -> str | None:
        """The digest a node reports for `ref`'s repository:tag (only nodes the tag index
        names are looked at; by node name, so the answer does not depend on list order)."""
        if ref.tagged is None:
            return ref.digest
        nodes = sorted(self.nodes.by_index(inventory.TAG_INDEX, ref.tagged),
                       key=lambda n: n.metadata.name)
        return inventory.resolve_tag(nodes, ref)

    def pods_in_namespace(self, namespace: str) -> list[Pod]:
        return self.pods.by_index(NAMESPACE_INDEX, namespace)

    def namespace_obj(self, name: str) -> Namespace | None:
        return self.namespaces.get(name)

    def config_obj(self) -> ConfigMap | None:
        return self.config.get(f"{self.namespace}/{self.config_map}")

    def switch_state(self, default: bool) -> Switch:
        """The kill switch: the ConfigMap's `enabled` when it holds one (with who/when/why),
        else `default` (the controller's `--enabled`, the install-time default). Read as
        tote_core/killswitch reads it, for the reconciler, the log, Events, the status feed."""
        cm = self.config_obj()
        return killswitch.read(None if cm is None else cm.data, default=default,
                               namespace=self.namespace, name=self.config_map)

    def runtime_switch(self) -> tuple[bool | None, str]:
        """The kill switch ConfigMap's `enabled` key → (value, problem).

        Read with the one boolean parser the flag uses (true/false, yes/no, on/off, 1/0).
        Absent: (None, ""). Unrecognised: (False, why) — salvage stays OFF (fail closed)
        and the caller logs and events the problem.
        """
        sw = self.switch_state(default=True)
        if sw.source == "flag":
            return None, ""
        return sw.enabled, sw.problem

    def runtime_enabled(self) -> bool | None:
        """The kill switch ConfigMap's `enabled` key: True/False, None when absent."""
        return self.runtime_switch()[0]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every informer; started() once all have listed (caches synced)."""
        async with trio.open_nursery() as nursery:
            for informer in self.informers:
                await nursery.start(informer.run)
            # The listed objects are the bulk of the heap and live until replaced (then freed
            # by reference counting: they hold no cycles). Move them out of the cyclic GC's
            # generations so a full collection no longer traverses them: at 10 000 pods and
            # 500 nodes that is ~180 000 objects and 120 ms of stopped event loop per pass.
            gc.freeze()
            task_status.started()
