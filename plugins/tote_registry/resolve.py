"""Resolve a tag to its digest by asking the registry (opt-in: `--registry-resolve`).

Asked by the reconciler only after `Node.status.images` and the agents had no digest for a
tag. A `HEAD /v2/<repo>/manifests/<tag>` (Accept: OCI index/manifest, Docker manifest
list/v2) returns `Docker-Content-Digest`; without that header the manifest is fetched and
hashed (`tote_core.oci.client.Session.manifest_digest`). Auth uses the pod's `imagePullSecrets`
(dockerconfigjson, or legacy dockercfg) matched to the registry host. TLS verifies against
the system roots plus `--registry-resolve-ca`; `--registry-insecure` skips verification and
falls back to plain HTTP.

The same lookups, by digest, tell the reaper whether the registry serves a pinned salvaged
image again (`serves`, the `registry_serves` hook; not counted in the resolve metrics).

Every tag lookup is counted in `tote_registry_resolve_total{result}` (found, not_found,
unauthorized, error) and timed. Failures return None and are logged at debug level,
without credentials. Results are cached briefly so a reconcile loop does not hammer the
registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from tote_core import metrics
from tote_core.detect.reference import ImageReference, parse
from tote_core.errors import InvalidReference, KubeError, RegistryError
from tote_core.kube.client import resource_path
from tote_core.oci.auth import Credentials, api_host, auths_from_secret, credentials_for
from tote_core.oci.client import NOT_FOUND, UNAUTHORIZED, RegistryClient, Session
from tote_core.ttlcache import TTLCache

log = logging.getLogger("tote.plugins.registry")

CACHE_TTL = 30.0
NEGATIVE_TTL = 10.0
CACHE_MAX = 1024

T = TypeVar("T")
FOUND, ERROR = "found", "error"
RESULTS = (FOUND, NOT_FOUND, UNAUTHORIZED, ERROR)  # metric labels


async def read_credentials(kube: Any, namespace: str, names: list[str], domain: str
                           ) -> list[Credentials]:
    """Every credential the named dockerconfigjson Secrets hold for `domain`, in order.

    Read directly from the API (never cached): a rotated Secret takes effect at once.
    Unreadable Secrets are skipped (logged at debug level, by name only).
    """
    found: list[Credentials] = []
    for name in names:
        try:
            secret: dict[str, Any] = await kube.get(
                resource_path("v1", "secrets", namespace, name), dict)
        except KubeError as exc:
            log.debug("secret %s/%s unreadable: %s", namespace, name, type(exc).__name__)
            continue
        creds = credentials_for(auths_from_secret(secret), domain)
        if creds is not None and creds not in found:
            found.append(creds)
    return found


class Resolver:
    def __init__(self, kube: Any, client: RegistryClient) -> None:
        self.kube = kube
        self.client = client
        self._cache: TTLCache[tuple[str, str, tuple[str, ...]], str | None] = TTLCache(
            CACHE_TTL, CACHE_MAX, time.monotonic)

    async def _ask(self, ref: ImageReference, namespace: str, pull_secrets: list[str],
                   question: Callable[[Session], Awaitable[T]]) -> T:
        """`question` answered by `ref`'s registry, with each credential of the pull Secrets
        in turn (anonymous when none): only another credential can fix an auth failure, so
        any other failure ends the tries. Raises the last failure."""
        all_creds = await read_credentials(self.kube, namespace, pull_secrets, ref.domain)
        attempts: list[Credentials | None] = list(all_creds) or [None]
        failure: RegistryError | None = None
        for creds in attempts:
            try:
                async with self.client.session(api_host(ref.domain), creds) as s:
                    return await question(s)
            except RegistryError as exc:
                failure = exc
                if exc.reason != UNAUTHORIZED:
                    break
        assert failure is not None
        raise failure

    async def resolve(self, image_ref: str, namespace: str, pull_secrets: list[str]) -> str:
        try:
            ref = parse(image_ref)
        except InvalidReference as exc:
            raise RegistryError(str(exc)) from exc
        if ref.digest:
            return ref.digest
        tag = ref.tag
        assert tag is not None
        return await self._ask(ref, namespace, pull_secrets,
                               lambda s: s.manifest_digest(ref.path, tag))

    async def serves(self, image_ref: str, digest: str, namespace: str,
                     pull_secrets: list[str]) -> bool | None:
        """Whether the registry serves `<repository>@<digest>` (HEAD, else GET and hash):
        True; False when it answers not found or refuses every credential; None when it
        cannot be asked (unreachable, an error). Never cached: the caller backs off."""
        try:
            ref = parse(image_ref)
        except InvalidReference as exc:
            log.debug("not a reference, cannot ask its registry: %s", exc)
            return None
        try:
            got = await self._ask(ref, namespace, pull_secrets,
                                  lambda s: s.manifest_digest(ref.path, digest))
        except RegistryError as failure:
            log.debug("does %s serve %s? %s (%s)", ref.domain, digest, failure.reason, failure)
            return False if failure.reason in (NOT_FOUND, UNAUTHORIZED) else None
        return got == digest

    async def registry_resolve(
        self, image_ref: str, namespace: str, pull_secrets: list[str]
    ) -> str | None:
        key = (image_ref, namespace, tuple(pull_secrets))
        hit, cached = self._cache.get(key)
        if hit:
            return cached
        started = time.perf_counter()
        digest: str | None = None
        result = ERROR
        try:
            with trio.fail_after(self.client.timeout):
                digest = await self.resolve(image_ref, namespace, pull_secrets)
            result = FOUND
        except RegistryError as exc:
            result = exc.reason if exc.reason in RESULTS else ERROR
            log.debug("registry lookup of %s failed (%s): %s", image_ref, result, exc)
        except trio.TooSlowError:
            log.debug("registry lookup of %s timed out after %.1fs", image_ref,
                      self.client.timeout)
        finally:
            metrics.REGISTRY_RESOLVE_DURATION.observe(time.perf_counter() - started)
        metrics.REGISTRY_RESOLVE.labels(result).inc()
        if result == FOUND:
            log.debug("registry resolves %s to %s", image_ref, digest)
        self._cache.put(key, digest, ttl=None if digest else NEGATIVE_TTL)
        return digest
