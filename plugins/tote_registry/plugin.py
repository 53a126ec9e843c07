"""Resolve a tag to its digest by asking the registry (opt-in: `--registry-resolve`).

Asked by the reconciler only after `Node.status.images` and the agents had no digest for a
tag. A `HEAD /v2/<repo>/manifests/<tag>` (Accept: OCI index/manifest, Docker manifest
list/v2) returns `Docker-Content-Digest`; without that header the manifest is fetched and
hashed. Auth uses the pod's `imagePullSecrets` (dockerconfigjson, or legacy dockercfg)
matched to the registry host, answering a `Bearer` (token endpoint, basic credentials) or
`Basic` challenge. TLS verifies against the system roots plus `--registry-resolve-ca`;
`--registry-insecure` skips verification and falls back to plain HTTP.

Every lookup is counted in `tote_registry_resolve_total{result}` (found, not_found,
unauthorized, error) and timed. Failures return None and are logged at debug level,
without credentials. Results are cached briefly so a reconcile loop does not hammer the
registry.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from tote_core import metrics
from tote_core.detect.reference import parse, validate_digest
from tote_core.errors import InvalidReference, KubeError
from tote_core.hooks.context import PluginContext
from tote_core.hooks.hookspecs import hookimpl
from tote_core.kube.client import resource_path
from tote_registry.auth import (
    Challenge,
    Credentials,
    api_host,
    auths_from_secret,
    basic_header,
    credentials_for,
    parse_challenges,
)

log = logging.getLogger("tote.plugins.registry")

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
CACHE_TTL = 30.0
NEGATIVE_TTL = 10.0
CACHE_MAX = 1024

FOUND, NOT_FOUND, UNAUTHORIZED, ERROR = "found", "not_found", "unauthorized", "error"
RESULTS = (FOUND, NOT_FOUND, UNAUTHORIZED, ERROR)


class LookupFailed(Exception):
    """A lookup ended without a digest; `result` is one of RESULTS (metrics label)."""

    def __init__(self, result: str, why: str) -> None:
        super().__init__(why)
        self.result = result


@dataclass
class Settings:
    timeout: float = 5.0
    ca: str = ""
    insecure: bool = False


class Resolver:
    def __init__(self, kube: Any, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self._ssl: ssl.SSLContext | bool = self._ssl_context()
        self._cache: dict[tuple[str, str, tuple[str, ...]], tuple[float, str | None]] = {}

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self.settings.insecure:
            return False
        ctx = ssl.create_default_context()  # system roots ...
        if self.settings.ca:
            ctx.load_verify_locations(cafile=self.settings.ca)  # ... plus the bundle
        return ctx

    # -- pull secrets ------------------------------------------------------------------

    async def credentials(
        self, namespace: str, pull_secrets: list[str], domain: str
    ) -> list[Credentials]:
        """Every credential the pod's pull secrets hold for `domain`, in secret order."""
        found: list[Credentials] = []
        for name in pull_secrets:
            try:
                secret: dict[str, Any] = await self.kube.get(
                    resource_path("v1", "secrets", namespace, name), dict
                )
            except KubeError as exc:
                log.debug("pull secret %s/%s unreadable: %s", namespace, name,
                          type(exc).__name__)
                continue
            creds = credentials_for(auths_from_secret(secret), domain)
            if creds is not None and creds not in found:
                found.append(creds)
        return found

    # -- HTTP --------------------------------------------------------------------------

    async def _token(
        self, http: httpx.AsyncClient, challenge: Challenge, creds: Credentials | None,
        repo_path: str,
    ) -> str:
        realm = challenge.realm
        if not realm.startswith(("https://", "http://")):
            raise LookupFailed(ERROR, "bearer challenge without a usable realm")
        params = {"scope": challenge.params.get("scope") or f"repository:{repo_path}:pull"}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        auth = httpx.BasicAuth(creds.username, creds.password) if creds else None
        resp = await http.get(realm, params=params, auth=auth)
        if resp.status_code in (401, 403):
            raise LookupFailed(UNAUTHORIZED, f"token endpoint answered {resp.status_code}")
        if resp.status_code != 200:
            raise LookupFailed(ERROR, f"token endpoint answered {resp.status_code}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise LookupFailed(ERROR, "token endpoint answered no JSON") from exc
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise LookupFailed(ERROR, "token endpoint answered no token")
        return token

    async def _manifest(
        self, http: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> httpx.Response:
        resp = await http.head(url, headers=headers)
        if resp.status_code == 200 and resp.headers.get("Docker-Content-Digest"):
            return resp
        if resp.status_code in (200, 400, 405, 501):
            # No digest header, or HEAD not supported: fetch the manifest itself.
            resp = await http.get(url, headers=headers)
        return resp

    async def _lookup(
        self, http: httpx.AsyncClient, base: str, repo_path: str, ref: str,
        creds: Credentials | None,
    ) -> str:
        url = f"{base}/v2/{repo_path}/manifests/{ref}"
        headers = {"Accept": MANIFEST_ACCEPT}
        resp = await self._manifest(http, url, headers)
        if resp.status_code == 401:
            challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
            bearer = next((c for c in challenges if c.scheme == "bearer"), None)
            basic = next((c for c in challenges if c.scheme == "basic"), None)
            if bearer is not None:
                token = await self._token(http, bearer, creds, repo_path)
                headers["Authorization"] = f"Bearer {token}"
            elif basic is not None and creds is not None:
                headers["Authorization"] = basic_header(creds)
            else:
                raise LookupFailed(UNAUTHORIZED, "registry requires credentials; none matched")
            resp = await self._manifest(http, url, headers)
        if resp.status_code in (401, 403):
            raise LookupFailed(UNAUTHORIZED, f"registry answered {resp.status_code}")
        if resp.status_code == 404:
            raise LookupFailed(NOT_FOUND, "manifest unknown")
        if resp.status_code != 200:
            raise LookupFailed(ERROR, f"registry answered {resp.status_code}")
        digest = resp.headers.get("Docker-Content-Digest", "")
        if not digest:
            body = resp.content
            if not body or len(body) > MAX_MANIFEST_BYTES:
                raise LookupFailed(ERROR, "no digest header and no usable manifest body")
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        try:
            return validate_digest(digest.strip())
        except InvalidReference as exc:
            raise LookupFailed(ERROR, f"registry sent an invalid digest: {exc}") from exc

    async def _resolve_with(
        self, domain: str, repo_path: str, ref: str, creds: Credentials | None
    ) -> str:
        host = api_host(domain)
        schemes = ["https", "http"] if self.settings.insecure else ["https"]
        last: Exception | None = None
        async with httpx.AsyncClient(
            verify=self._ssl, timeout=self.settings.timeout, follow_redirects=True,
            trust_env=False,
        ) as http:
            for scheme in schemes:
                try:
                    return await self._lookup(http, f"{scheme}://{host}", repo_path, ref, creds)
                except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                    last = exc  # insecure: a plain-HTTP registry refuses the TLS handshake
                    continue
        raise LookupFailed(ERROR, f"cannot reach {host}: {type(last).__name__}: {last}")

    async def resolve(self, image_ref: str, namespace: str, pull_secrets: list[str]) -> str:
        try:
            ref = parse(image_ref)
        except InvalidReference as exc:
            raise LookupFailed(ERROR, str(exc)) from exc
        if ref.digest:
            return ref.digest
        assert ref.tag is not None
        all_creds = await self.credentials(namespace, pull_secrets, ref.domain)
        attempts: list[Credentials | None] = list(all_creds) or [None]
        failure: LookupFailed | None = None
        for creds in attempts:
            try:
                return await self._resolve_with(ref.domain, ref.path, ref.tag, creds)
            except LookupFailed as exc:
                failure = exc
                if exc.result != UNAUTHORIZED:
                    break  # only another credential can fix an auth failure
        assert failure is not None
        raise failure

    async def registry_resolve(
        self, image_ref: str, namespace: str, pull_secrets: list[str]
    ) -> str | None:
        key = (image_ref, namespace, tuple(pull_secrets))
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now < hit[0]:
            return hit[1]
        started = time.perf_counter()
        digest: str | None = None
        result = ERROR
        try:
            with trio.fail_after(self.settings.timeout):
                digest = await self.resolve(image_ref, namespace, pull_secrets)
            result = FOUND
        except LookupFailed as exc:
            result = exc.result
            log.debug("registry lookup of %s failed (%s): %s", image_ref, result, exc)
        except trio.TooSlowError:
            log.debug("registry lookup of %s timed out after %.1fs", image_ref,
                      self.settings.timeout)
        except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
            log.debug("registry lookup of %s failed: %s: %s", image_ref,
                      type(exc).__name__, exc)
        finally:
            metrics.REGISTRY_RESOLVE_DURATION.observe(time.perf_counter() - started)
        metrics.REGISTRY_RESOLVE.labels(result).inc()
        if result == FOUND:
            log.debug("registry resolves %s to %s", image_ref, digest)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (now + (CACHE_TTL if digest else NEGATIVE_TTL), digest)
        return digest


_resolver: Resolver | None = None


@hookimpl
def configure(context: PluginContext) -> None:
    global _resolver
    s = context.settings
    if not getattr(s, "registry_resolve", False):
        _resolver = None
        return
    _resolver = Resolver(
        context.kube,
        Settings(
            timeout=float(getattr(s, "registry_resolve_timeout", 5.0) or 5.0),
            ca=str(getattr(s, "registry_resolve_ca", "") or ""),
            insecure=bool(getattr(s, "registry_insecure", False)),
        ),
    )


@hookimpl
async def registry_resolve(image_ref: str, namespace: str, pull_secrets: list[str]) -> str | None:
    if _resolver is None:
        return None
    return await _resolver.registry_resolve(image_ref, namespace, pull_secrets)
