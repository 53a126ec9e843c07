"""Agent side of the backup push: upload an image from this node's containerd to a
registry with its digest preserved.

Why here and not in the controller: the bytes are on this node. Streaming them from the
content store straight to the registry is one hop; relaying them through the controller
would be two, and would put every layer through the controller's network and CPU.

What it does, in the order the OCI distribution spec needs:
- blobs (configs, layers) first, several at once: `HEAD` → already in the repository, skip;
  else, if a repository in `mount_from` holds it, a cross-repository mount (`POST
  ?mount=&from=`, 201); else `POST` an upload and send the bytes — one `PUT ?digest=` for
  blobs up to `MONOLITHIC_MAX`, `PATCH` chunks of `CHUNK` then `PUT ?digest=` above that.
  Bytes are read in `READ_CHUNK` pieces from the blob file (when the agent has direct access
  to the content directory) or containerd's content API; a layer is never held in memory;
- manifests last, their original bytes: platform manifests by digest, then the top
  (index or manifest) by tag. The registry must answer with the same digest.

A multi-arch index is pushed only when every platform manifest it lists is complete on this
node (a registry refuses an index whose children it lacks). A node usually holds one
platform: then that platform's manifest chain is pushed, tagged, and the result says the
index was not (`note`).

Credentials arrive as a ready `Authorization` value (the controller reads the Secret and does
the token exchange, so an agent never sees a password for a token-auth registry); this module
never logs it. No retries: a failed push is reported to the controller, which reports it.

Why one module of ~400 lines: it is one protocol (the distribution spec's push order —
blobs, mounts, chunked uploads, manifests last), and the steps share the request's
registry, credentials and error mapping; split, each half would need the other's.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from tote_containerd.agent import metrics, oci
from tote_containerd.agent.api import PushRequest, PushResult
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import (
    AgentError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    as_one_error,
)

log = logging.getLogger("tote.agent.push")
GC_REF_CONTENT = "containerd.io/gc.ref.content."

READ_CHUNK = 2 * 1024 * 1024
MONOLITHIC_MAX = 128 * 1024 * 1024
CHUNK = 128 * 1024 * 1024
PARALLELISM = 4
MAX_MOUNT_SOURCES = 8
HTTP_TIMEOUT = httpx.Timeout(120.0, connect=15.0)


class _Chain:
    """One platform manifest and what it references."""

    def __init__(self, desc: oci.Desc, data: bytes, blobs: list[oci.Desc]) -> None:
        self.desc = desc
        self.data = data
        self.blobs = blobs


class _Counts:
    def __init__(self) -> None:
        self.uploaded = self.skipped = self.mounted = self.bytes = 0


def _ssl_context(req: PushRequest) -> ssl.SSLContext | bool:
    if req.insecure:
        return False
    ctx = ssl.create_default_context()  # system roots ...
    if req.ca_pem:
        try:
            ctx.load_verify_locations(cadata=req.ca_pem)  # ... plus the bundle
        except ssl.SSLError as exc:
            raise InvalidArgument(f"ca_pem is not a usable PEM bundle: {exc}") from exc
    return ctx


def _check(req: PushRequest) -> None:
    """Refuse a request that does not name one digest, one registry and one `repo:tag`."""
    oci.check_digest(req.digest)
    scheme, sep, host = req.registry_url.partition("://")
    if not sep or scheme not in ("https", "http") or not host or "/" in host.rstrip("/"):
        raise InvalidArgument(f"invalid registry_url {req.registry_url!r}: expected "
                              "https://host[:port] or http://host[:port]")
    if not req.tag:
        raise InvalidArgument("a tag is required")
    ref = oci.parse_ref(f"{host.rstrip('/')}/{req.repository}:{req.tag}")
    if ref.tag != req.tag or ref.digest or \
            ref.repository != f"{host.rstrip('/')}/{req.repository}":
        raise InvalidArgument(f"invalid repository or tag {req.repository!r}:{req.tag!r}")


def _status_error(resp: httpx.Response, what: str) -> AgentError:
    """A registry answer we cannot continue from, as an agent error (bounded `reason`)."""
    body = ""
    with contextlib.suppress(Exception):
        body = resp.text[:300].strip()
    msg = f"registry answered {resp.status_code} to {what}" + (f": {body}" if body else "")
    if resp.status_code == 401:
        return Unauthenticated(msg, reason="unauthorized")
    if resp.status_code == 403:
        return PermissionDenied(msg, reason="unauthorized")
    if resp.status_code >= 500:
        return Unavailable(msg, reason="registry_error")
    return FailedPrecondition(msg, reason="registry_error")


def _why(exc: BaseException) -> str:
    """The first non-empty message along the cause chain (httpx's ConnectError wrapping a TLS
    verification failure has none of its own)."""
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return f"{type(seen).__name__}: {seen}"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


@contextlib.contextmanager
def _http_errors(what: str) -> Any:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise DeadlineExceeded(f"registry timed out during {what}: {_why(exc)}",
                               reason="registry_unreachable") from exc
    except (httpx.TransportError, OSError) as exc:
        raise Unavailable(f"registry unreachable during {what}: {_why(exc)}",
                          reason="registry_unreachable") from exc


class Pusher:
    """One push: plan from the local content store, then upload."""

    def __init__(self, cd: ContainerdClient, req: PushRequest, *, platform: str,
                 blob_path: Callable[[str], Path | None]) -> None:
        self.cd = cd
        self.req = req
        self.platform = platform
        self.blob_path = blob_path
        self.repo = req.repository
        self.counts = _Counts()

    # ------------------------------------------------------------------ plan
    async def _manifest_chain(self, desc: oci.Desc) -> _Chain | None:
        """The chain of one platform manifest if every blob of it is here and held, else None.

        Held = referenced by the manifest's `containerd.io/gc.ref.content.*` labels. An import
        of one platform (ctr, CRI) writes every blob of the archive but labels only the chosen
        platform's manifest: the siblings' blobs are present until containerd's next garbage
        collection, which may run in the middle of a push (seen: "content digest …: not found"
        halfway through an index push). Such a sibling counts as absent, so the push is the
        deterministic partial one."""
        info = await self.cd.info(desc.digest)
        if info is None:
            return None
        held = {v for k, v in info.labels.items() if k.startswith(GC_REF_CONTENT)}
        data = await self.cd.read_all(desc.digest, limit=oci.MAX_MANIFEST_BYTES)
        config, layers = oci.manifest_children(oci.load_json(data, desc.digest))
        for d in (config, *layers):
            if d.digest not in held or await self.cd.info(d.digest) is None:
                return None
        mt = desc.media_type or oci.media_type_of(oci.load_json(data, desc.digest),
                                                  oci.MT_OCI_MANIFEST)
        return _Chain(oci.Desc(mt, desc.digest, len(data)), data, [config, *layers])

    async def plan(self) -> tuple[oci.Desc, bytes, list[_Chain], str, str]:
        """(top to tag, its bytes, chains to push first, note, platform of a partial push)."""
        digest = self.req.digest
        info = await self.cd.info(digest)
        if info is None:
            raise NotFound(f"{digest} is not in this node's content store", reason="absent")
        top = await self.cd.read_all(digest, limit=oci.MAX_MANIFEST_BYTES)
        doc = oci.load_json(top, digest)
        recs = await self.cd.list_images([f"target.digest=={digest}"])
        mt = oci.media_type_of(doc, recs[0].target.media_type if recs else "")
        if mt not in oci.INDEX_TYPES:
            chain = await self._manifest_chain(oci.Desc(mt, digest, len(top)))
            if chain is None:
                raise FailedPrecondition(f"{digest}: blobs of the image are missing on this node "
                                         "(discarded layers?)", reason="incomplete")
            return chain.desc, top, [], "", ""
        entries = doc.get("manifests")
        if not isinstance(entries, list) or not entries:
            raise FailedPrecondition(f"{digest}: index has no manifests")
        chains: list[_Chain] = []
        for n, e in enumerate(entries):
            chain = await self._manifest_chain(oci.descriptor(e, f"index.manifests[{n}]"))
            if chain is not None:
                chains.append(chain)
        if len(chains) == len(entries):
            return oci.Desc(mt, digest, len(top)), top, chains, "", ""
        # Partial: push this node's platform chain, tagged, and say the index was not pushed.
        mine = oci.select_manifest(doc, self.platform)
        chain = await self._manifest_chain(mine) if mine is not None else None
        if chain is None:
            raise FailedPrecondition(
                f"{digest}: the index's manifest for platform {self.platform} is not complete "
                "on this node", reason="incomplete")
        note = (f"index {digest} not pushed: this node holds {len(chains)} of "
                f"{len(entries)} platform manifests; pushed the {self.platform} manifest "
                f"{chain.desc.digest}")
        return chain.desc, chain.data, [], note, self.platform

    # ------------------------------------------------------------------ bytes
    @contextlib.asynccontextmanager
    async def _reader(self, d: oci.Desc, offset: int, length: int
                      ) -> AsyncIterator[AsyncIterator[bytes]]:
        """`length` bytes of a blob from `offset`: the file when readable, else the API."""
        path = self.blob_path(d.digest)
        if path is not None and path.exists():
            async def from_file() -> AsyncGenerator[bytes, None]:
                f = await trio.to_thread.run_sync(path.open, "rb")
                try:
                    await trio.to_thread.run_sync(f.seek, offset)
                    left = length
                    while left:
                        data = await trio.to_thread.run_sync(f.read, min(READ_CHUNK, left))
                        if not data:
                            raise Unavailable(f"{d.digest}: blob file shorter than its size")
                        left -= len(data)
                        yield data
                finally:
                    f.close()

            gen = from_file()
            async with contextlib.aclosing(gen):
                yield gen
            return
        async with self.cd.read(d.digest, offset, length) as chunks:
            yield chunks

    async def _body(self, d: oci.Desc, offset: int, length: int) -> AsyncIterator[bytes]:
        sent = 0
        async with self._reader(d, offset, length) as chunks:
            async for data in chunks:
                sent += len(data)
                if sent > length:
                    raise DataLoss(f"{d.digest}: content store returned more bytes than its size")
                self.counts.bytes += len(data)
                metrics.PUSH_BYTES.inc(len(data))
                yield data
        if sent != length:
            raise Unavailable(f"{d.digest}: content ended at {sent} of {length} bytes")

    # ------------------------------------------------------------------ HTTP
    async def _send(self, http: httpx.AsyncClient, method: str, url: str | httpx.URL,
                    what: str, *, headers: dict[str, str] | None = None, **kw: Any
                    ) -> httpx.Response:
        """One request; the credentials go only to the registry itself, never to another
        origin an upload `Location` may point at."""
        headers = dict(headers or {})
        target = http.base_url.join(url)
        if self.req.authorization and (target.scheme, target.host, target.port) == (
                http.base_url.scheme, http.base_url.host, http.base_url.port):
            headers["Authorization"] = self.req.authorization
        with _http_errors(what):
            return await http.request(method, target, headers=headers, **kw)

    def _upload_url(self, resp: httpx.Response, what: str) -> httpx.URL:
        loc = resp.headers.get("Location")
        if not loc:
            raise FailedPrecondition(f"registry sent no Location for {what}",
                                     reason="registry_error")
        return resp.request.url.join(loc)

    async def _blob_exists(self, http: httpx.AsyncClient, repo: str, digest: str) -> bool:
        resp = await self._send(http, "HEAD", f"/v2/{repo}/blobs/{digest}", f"HEAD blob {digest}")
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise _status_error(resp, f"HEAD /v2/{repo}/blobs/{digest}")

    async def _start_upload(self, http: httpx.AsyncClient, d: oci.Desc) -> httpx.URL | None:
        """An upload URL, or None when the blob was mounted from another repository."""
        for src in self.req.mount_from[:MAX_MOUNT_SOURCES]:
            if src == self.repo or not await self._blob_exists(http, src, d.digest):
                continue
            what = f"mount {d.digest} from {src}"
            resp = await self._send(http, "POST", f"/v2/{self.repo}/blobs/uploads/", what,
                                    params={"mount": d.digest, "from": src})
            if resp.status_code == 201:
                return None
            if resp.status_code == 202:  # mount refused; the registry opened an upload
                return self._upload_url(resp, what)
            raise _status_error(resp, what)
        what = f"POST /v2/{self.repo}/blobs/uploads/"
        resp = await self._send(http, "POST", f"/v2/{self.repo}/blobs/uploads/", what)
        if resp.status_code != 202:
            raise _status_error(resp, what)
        return self._upload_url(resp, what)

    async def _upload(self, http: httpx.AsyncClient, d: oci.Desc, url: httpx.URL) -> None:
        offset = 0
        if d.size > MONOLITHIC_MAX:
            while offset < d.size:
                n = min(CHUNK, d.size - offset)
                what = f"PATCH {d.digest} [{offset}, {offset + n})"
                resp = await self._send(http, "PATCH", url, what, content=self._body(d, offset, n),
                                        headers={"Content-Type": "application/octet-stream",
                                                 "Content-Length": str(n),
                                                 "Content-Range": f"{offset}-{offset + n - 1}"})
                if resp.status_code != 202:
                    raise _status_error(resp, what)
                url = self._upload_url(resp, what)
                offset += n
        what = f"PUT {d.digest}"
        body = self._body(d, offset, d.size - offset) if offset < d.size else b""
        resp = await self._send(
            http, "PUT", url.copy_merge_params({"digest": d.digest}), what, content=body,
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(d.size - offset)})
        if resp.status_code != 201:
            raise _status_error(resp, what)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != d.digest:
            raise DataLoss(f"registry stored {d.digest} as {got}", reason="digest_mismatch")

    async def _push_blob(self, http: httpx.AsyncClient, d: oci.Desc) -> None:
        if await self._blob_exists(http, self.repo, d.digest):
            self.counts.skipped += 1
            metrics.PUSH_BLOBS.labels(outcome="skipped").inc()
            return
        url = await self._start_upload(http, d)
        if url is None:
            self.counts.mounted += 1
            metrics.PUSH_BLOBS.labels(outcome="mounted").inc()
            return
        await self._upload(http, d, url)
        self.counts.uploaded += 1
        metrics.PUSH_BLOBS.labels(outcome="uploaded").inc()

    async def _manifest_at(self, http: httpx.AsyncClient, ref: str, mt: str) -> str | None:
        what = f"HEAD /v2/{self.repo}/manifests/{ref}"
        accept = ", ".join(sorted({mt, *oci.INDEX_TYPES, *oci.MANIFEST_TYPES}))
        resp = await self._send(http, "HEAD", f"/v2/{self.repo}/manifests/{ref}", what,
                                headers={"Accept": accept})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise _status_error(resp, what)
        return resp.headers.get("Docker-Content-Digest") or None

    async def _put_manifest(self, http: httpx.AsyncClient, ref: str, desc: oci.Desc,
                            data: bytes) -> None:
        what = f"PUT /v2/{self.repo}/manifests/{ref}"
        resp = await self._send(http, "PUT", f"/v2/{self.repo}/manifests/{ref}", what,
                                content=data, headers={"Content-Type": desc.media_type})
        if resp.status_code not in (200, 201):
            raise _status_error(resp, what)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != desc.digest:
            raise DataLoss(f"registry stored manifest {desc.digest} as {got}: digest not "
                           "preserved", reason="digest_mismatch")

    # ------------------------------------------------------------------ run
    async def run(self) -> PushResult:
        _check(self.req)
        top, top_bytes, chains, note, platform = await self.plan()
        own = [] if chains else [await self._manifest_chain(top)]
        all_chains = [c for c in (chains or own) if c is not None]
        blobs = list({b.digest: b for c in all_chains for b in c.blobs}.values())
        async with httpx.AsyncClient(
                base_url=self.req.registry_url, verify=_ssl_context(self.req), trust_env=False,
                timeout=HTTP_TIMEOUT, follow_redirects=False) as http:
            if await self._manifest_at(http, self.req.tag, top.media_type) == top.digest:
                # The tag already names this exact manifest: the registry has every blob.
                self.counts.skipped = len(blobs)
                metrics.PUSH_BLOBS.labels(outcome="skipped").inc(len(blobs))
            else:
                limit = trio.Semaphore(self.req.parallelism or PARALLELISM)

                async def one(d: oci.Desc) -> None:
                    async with limit:
                        await self._push_blob(http, d)

                with as_one_error("parallel blob uploads"):
                    async with trio.open_nursery() as nursery:
                        for d in sorted(blobs, key=lambda b: -b.size):  # big first: less tail
                            nursery.start_soon(one, d)
                for c in chains:  # an index's children, by digest, before the index
                    if await self._manifest_at(http, c.desc.digest, c.desc.media_type) is None:
                        await self._put_manifest(http, c.desc.digest, c.desc, c.data)
                await self._put_manifest(http, self.req.tag, top, top_bytes)
        n = self.counts
        log.info("pushed %s to %s/%s:%s (%s): %d blobs uploaded, %d mounted, %d already "
                 "there, %d bytes", self.req.digest, self.req.registry_url, self.repo,
                 self.req.tag, top.digest, n.uploaded, n.mounted, n.skipped, n.bytes)
        return PushResult(
            pushed_digest=top.digest, index_pushed=bool(chains),
            manifests=[ch.desc.digest for ch in all_chains], blobs_total=len(blobs),
            blobs_uploaded=n.uploaded, blobs_skipped=n.skipped, blobs_mounted=n.mounted,
            bytes_uploaded=n.bytes, note=note, platform=platform)
