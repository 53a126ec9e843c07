"""The informer caches the controller keeps: pods, nodes, namespaces, its ConfigMap."""

from __future__ import annotations

from typing import Any

import trio

from tote_core.kube.client import KubeClient, resource_path
from tote_core.kube.informer import Informer
from tote_core.settings import parse_bool
from tote_core.structs.kube import ConfigMap, Namespace, Node, Pod


class Caches:
    def __init__(self, client: KubeClient, *, namespace: str, config_map: str) -> None:
        self.pods: Informer[Pod] = Informer(client, resource_path("v1", "pods"), Pod, name="pods")
        self.nodes: Informer[Node] = Informer(
            client, resource_path("v1", "nodes"), Node, name="nodes"
        )
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

    def namespace_obj(self, name: str) -> Namespace | None:
        return self.namespaces.get(name)

    def config_obj(self) -> ConfigMap | None:
        return self.config.get(f"{self.namespace}/{self.config_map}")

    def runtime_switch(self) -> tuple[bool | None, str]:
        """The kill switch ConfigMap's `enabled` key → (value, problem).

        Read with the one boolean parser the flag uses (true/false, yes/no, on/off, 1/0).
        Absent: (None, ""). Unrecognised: (False, why) — salvage stays OFF (fail closed)
        and the caller logs and events the problem.
        """
        cm = self.config_obj()
        if cm is None or "enabled" not in cm.data:
            return None, ""
        try:
            return parse_bool(cm.data["enabled"]), ""
        except ValueError as exc:
            return False, (f"ConfigMap {self.namespace}/{self.config_map} key 'enabled': "
                           f"{exc}; salvage stays OFF until it is fixed")

    def runtime_enabled(self) -> bool | None:
        """The kill switch ConfigMap's `enabled` key: True/False, None when absent."""
        return self.runtime_switch()[0]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every informer; started() once all have listed (caches synced)."""
        async with trio.open_nursery() as nursery:
            for informer in self.informers:
                await nursery.start(informer.run)
            task_status.started()
