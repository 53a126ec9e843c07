"""Walk ownerReferences (at most two levels) for `tote.dev/auto-salvage`.

Pod → ReplicaSet → Deployment; Pod → StatefulSet / DaemonSet / Job; Job → CronJob. The
first owner that carries the annotation decides. Lookups fetch metadata only
(PartialObjectMetadata) and are cached briefly, so the pods of one Deployment failing
together cost one lookup per owner rather than one per pod and reconcile.
"""

from __future__ import annotations

import logging

import trio

from tote_core.annotations import AUTO_SALVAGE, flag
from tote_core.errors import KubeError, NotFound
from tote_core.hooks.context import PluginContext
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import OptInQuery
from tote_core.kube.client import KubeClient, resource_path
from tote_core.structs.kube import OwnerReference, PartialObject
from tote_core.ttlcache import TTLCache

log = logging.getLogger("tote.plugins.inheritance")

MAX_DEPTH = 2
CACHE_TTL = 10.0
CACHE_MAX = 2048

# (apiVersion, kind) → plural; only these kinds are walked (RBAC grants get on exactly these).
OWNER_KINDS: dict[tuple[str, str], str] = {
    ("apps/v1", "ReplicaSet"): "replicasets",
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("apps/v1", "DaemonSet"): "daemonsets",
    ("batch/v1", "Job"): "jobs",
    ("batch/v1", "CronJob"): "cronjobs",
}


class OwnerWalker:
    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._cache: TTLCache[tuple[str, str, str, str], PartialObject | None] = TTLCache(
            CACHE_TTL, CACHE_MAX, trio.current_time)

    async def owner(self, namespace: str, ref: OwnerReference) -> PartialObject | None:
        key = (namespace, ref.api_version, ref.kind, ref.name)
        hit, cached = self._cache.get(key)
        if hit:
            return cached
        plural = OWNER_KINDS.get((ref.api_version, ref.kind))
        if plural is None:
            return None
        try:
            obj: PartialObject | None = await self.kube.get_metadata(
                resource_path(ref.api_version, plural, namespace, ref.name)
            )
        except NotFound:
            obj = None
        if obj is not None and ref.uid and obj.metadata.uid and obj.metadata.uid != ref.uid:
            obj = None  # a different object under the same name: not our owner
        self._cache.put(key, obj)
        return obj

    async def decide(self, namespace: str, owners: list[OwnerReference]) -> bool | None:
        level = owners
        for _ in range(MAX_DEPTH):
            next_level: list[OwnerReference] = []
            for ref in level:
                try:
                    obj = await self.owner(namespace, ref)
                except KubeError as exc:
                    log.debug("owner lookup %s/%s failed: %s", ref.kind, ref.name, exc)
                    continue
                if obj is None:
                    continue
                verdict = flag(obj.metadata.annotations, AUTO_SALVAGE)
                if verdict is not None:
                    return verdict
                next_level.extend(obj.metadata.owner_references)
            level = next_level
            if not level:
                break
        return None


class InheritancePlugin:
    """The `inheritance` plugin: one owner walker per controller, built at `configure`."""

    def __init__(self) -> None:
        self.walker: OwnerWalker | None = None

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        self.walker = OwnerWalker(context.kube)

    @hookimpl
    async def opt_in(self, query: OptInQuery) -> bool | None:
        if self.walker is None:
            return None
        owners = [
            OwnerReference(api_version=a, kind=k, name=n) for a, k, n in query.owner_references
        ]
        return await self.walker.decide(query.namespace, owners)
