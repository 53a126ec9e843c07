"""Async Kubernetes API client on httpx (trio via anyio).

Only the verbs tote needs: get, list, watch (streamed), create, patch (merge / JSON /
strategic), update, delete with preconditions, and status subresource writes. Responses are
decoded straight into msgspec Structs by the caller's chosen type.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import msgspec

from tote_core.errors import Conflict, Gone, KubeError, NotFound
from tote_core.kube.config import KubeConfig
from tote_core.structs.kube import ObjectList, PartialObject, Status, WatchEvent

log = logging.getLogger("tote.kube")
T = TypeVar("T")

MERGE_PATCH = "application/merge-patch+json"
METADATA_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"

_json_encoder = msgspec.json.Encoder()
_status_decoder = msgspec.json.Decoder(Status)


def resource_path(
    group_version: str, plural: str, namespace: str | None = None, name: str | None = None,
    subresource: str | None = None,
) -> str:
    """`/api/v1/namespaces/ns/pods/name/status` style paths."""
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code < 400:
        return
    try:
        status = _status_decoder.decode(response.content)
        message, reason = status.message, status.reason
    except msgspec.DecodeError:
        message, reason = response.text[:300], ""
    text = f"{what}: HTTP {response.status_code} {reason}: {message}".strip()
    cls: type[KubeError] = KubeError
    if response.status_code == 404:
        cls = NotFound
    elif response.status_code == 409:
        cls = Conflict
    elif response.status_code == 410:
        cls = Gone
    raise cls(text, status=response.status_code, reason=reason)


class KubeClient:
    """One HTTP/1.1 connection pool to the API server; safe to share between tasks."""

    def __init__(
        self, config: KubeConfig, *, timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport` replaces the network: tests (tote_core/testing's fake API server)
        drive the same client, informers and callers over objects held in memory."""
        self.config = config
        self._http = httpx.AsyncClient(
            transport=transport,
            base_url=config.server,
            verify=config.ssl_context(),
            timeout=httpx.Timeout(timeout, connect=5.0),
            headers={"Accept": "application/json", "User-Agent": "tote/0.1"},
            # Every connection opened is kept: with 5 watches open, the detection workers and
            # the salvage pool busy, a burst needs more than 20 at once, and each one beyond
            # the keep-alive limit was closed after its request and reopened for the next —
            # a TLS handshake per event, 10% of the controller's CPU in a 5 000-pod burst.
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=50),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        token = await self.config.fresh_bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> bytes:
        """One API call; raises KubeError subclasses with the server's message."""
        content = None if body is None else _json_encoder.encode(body)
        extra = {"Content-Type": content_type} if content else {}
        if accept:
            extra["Accept"] = accept
        for attempt in (1, 2):
            headers = await self._headers(extra)
            try:
                response = await self._http.request(
                    method,
                    path,
                    params=params,
                    content=content,
                    headers=headers,
                )
            except httpx.HTTPError as exc:
                raise KubeError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            # A refused token (revoked, clock skew) is worth one fresh one from the source.
            if response.status_code != 401 or attempt == 2:
                break
            if not self.config.credentials.invalidate():
                break
        _raise_for(response, f"{method} {path}")
        return response.content

    async def get(self, path: str, type_: type[T], **params: Any) -> T:
        raw = await self.request("GET", path, params=params or None)
        return msgspec.json.decode(raw, type=type_)

    async def get_metadata(self, path: str) -> PartialObject:
        """GET only the object's metadata (PartialObjectMetadata): cheap owner lookups."""
        raw = await self.request("GET", path, accept=METADATA_ACCEPT)
        return msgspec.json.decode(raw, type=PartialObject)

    async def list(self, path: str, type_: type[T], **params: Any) -> ObjectList[T]:
        """A full list, following `continue` tokens (pass `limit` to page it)."""
        result: ObjectList[T] | None = None
        async for page in self.list_pages(path, type_, **params):
            if result is None:
                result = page
            else:
                result.items.extend(page.items)
                result.metadata = page.metadata
        assert result is not None  # list_pages yields at least one page
        return result

    async def list_pages(
        self, path: str, type_: type[T], *, limit: int | None = None,
        skip_undecodable: bool = False, **params: Any,
    ) -> AsyncIterator[ObjectList[T]]:
        """A list as the API server's pages of at most `limit` items (None: one page).

        Paged, a list of 150 000 pods never exists as one ~200 MB body and its decoded copy
        at once: each page is decoded and handed over before the next is read, so the
        peak stays at one page above what the caller keeps. The pages are one consistent
        snapshot (the first page's resourceVersion); an expired `continue` token is 410 Gone,
        which informers answer with a fresh list.

        `skip_undecodable`: an object that does not decode as `type_` is left out with a
        warning instead of failing the page. Informers list this way, as their watches
        already skip such events: one odd object (a field a kubelet or an old client writes
        as null) must not keep a whole cache, and the controller with it, from syncing."""
        query = {k: v for k, v in params.items() if v is not None}
        if limit is not None:
            if limit <= 0:
                raise ValueError(f"list {path}: limit must be positive, got {limit}")
            query["limit"] = str(limit)
        decoder = msgspec.json.Decoder(ObjectList[type_])  # type: ignore[valid-type]
        while True:
            raw = await self.request("GET", path, params=query)
            try:
                page: ObjectList[T] = decoder.decode(raw)
            except msgspec.ValidationError as exc:
                if not skip_undecodable:
                    raise
                page = _decode_items_one_by_one(raw, type_, path, exc)
            del raw
            yield page
            if not page.metadata.continue_:
                return
            query["continue"] = page.metadata.continue_

    async def create(self, path: str, body: Any, type_: type[T] | None = None) -> Any:
        raw = await self.request("POST", path, body=body)
        return msgspec.json.decode(raw, type=type_) if type_ else msgspec.json.decode(raw)

    async def update(self, path: str, body: Any, type_: type[T] | None = None) -> Any:
        raw = await self.request("PUT", path, body=body)
        return msgspec.json.decode(raw, type=type_) if type_ else msgspec.json.decode(raw)

    async def patch(
        self, path: str, body: Any, *, content_type: str = MERGE_PATCH,
        type_: type[T] | None = None,
    ) -> Any:
        raw = await self.request("PATCH", path, body=body, content_type=content_type)
        return msgspec.json.decode(raw, type=type_) if type_ else msgspec.json.decode(raw)

    async def delete(
        self, path: str, *, uid: str | None = None, resource_version: str | None = None,
        propagation: str | None = None,
    ) -> None:
        """Delete, optionally with UID / resourceVersion preconditions."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        pre: dict[str, str] = {}
        if uid:
            pre["uid"] = uid
        if resource_version:
            pre["resourceVersion"] = resource_version
        if pre:
            body["preconditions"] = pre
        if propagation:
            body["propagationPolicy"] = propagation
        await self.request("DELETE", path, body=body)

    @asynccontextmanager
    async def watch(
        self, path: str, *, resource_version: str, timeout_seconds: int = 300,
        **params: Any,
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """Open a watch stream; yields an async iterator of raw watch events.

        The server ends the stream after `timeout_seconds`; callers reopen it from the last
        resourceVersion they saw (bookmarks keep that fresh).
        """
        query: dict[str, Any] = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        query.update({k: v for k, v in params.items() if v is not None})
        decoder = msgspec.json.Decoder(WatchEvent)
        request = self._http.build_request(
            "GET", path, params=query, headers=await self._headers(),
            timeout=httpx.Timeout(timeout_seconds + 30.0, connect=5.0),
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise KubeError(f"WATCH {path}: {type(exc).__name__}: {exc}") from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                _raise_for(response, f"WATCH {path}")

            async def events() -> AsyncIterator[WatchEvent]:
                try:
                    async for line in response.aiter_lines():
                        if line.strip():
                            yield decoder.decode(line)
                except httpx.HTTPError as exc:
                    raise KubeError(f"WATCH {path}: stream broke: {exc}") from exc

            yield events()
        finally:
            await response.aclose()


def _decode_items_one_by_one(raw: bytes, type_: type[T], path: str,
                             exc: msgspec.ValidationError) -> ObjectList[T]:
    """A list page whose whole decode failed: each item decoded alone, the failing ones
    logged (with the object's name) and left out. Only taken after a failure, so a normal
    page costs one decode."""
    loose = msgspec.json.decode(raw, type=ObjectList[msgspec.Raw])
    one = msgspec.json.Decoder(type_)
    items: list[T] = []
    for item in loose.items:
        try:
            items.append(one.decode(item))
        except msgspec.ValidationError as item_exc:
            try:
                meta = msgspec.json.decode(item, type=PartialObject).metadata
                what = f"{meta.namespace or '-'}/{meta.name}"
            except msgspec.ValidationError:
                what = "an object without readable metadata"
            log.warning("list %s: skipping %s, which does not decode: %s (page: %s)",
                        path, what, item_exc, exc)
    return ObjectList(metadata=loose.metadata, items=items)
