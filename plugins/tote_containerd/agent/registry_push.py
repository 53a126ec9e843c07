"""Agent side of the backup push: upload an image from this node's containerd to a
registry with its digest preserved.

Why here and not in the controller: the bytes are on this node. Streaming them from the
content store straight to the registry is one hop; relaying them through the controller
would be two, and would put every layer through the controller's network and CPU.

What it does, in the order the OCI distribution spec needs (the protocol steps — HEAD
skips, cross-repository mounts, monolithic or chunked `PATCH` uploads, manifest `PUT`s with
the digest checked — are core's `tote_core.oci.upload`, shared with the controller's
registry client; this module plans and feeds them):
- blobs (configs, layers) first, several at once, biggest first. Bytes are read in
  `READ_CHUNK` pieces from the blob file (when the agent has direct access to the content
  directory) or containerd's content API; a layer is never held in memory;
- manifests last, their original bytes: platform manifests by digest, then the top
  (index or manifest) by tag. The registry must answer with the same digest.

A multi-arch index is pushed only when every platform manifest it lists is complete on this
node (a registry refuses an index whose children it lacks). A node usually holds one
platform: then that platform's manifest chain is pushed, tagged, and the result says the
index was not (`note`).

Credentials arrive as a ready `Authorization` value (the controller reads the Secret and does
the token exchange, so an agent never sees a password for a token-auth registry); this module
never logs it. No retries: a failed push is reported to the controller, which reports it.

Core raises `RegistryError`; `_agent_error` is where it becomes the agent's error (gRPC
code and the bounded `reason` the controller maps back).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path

import trio

from tote_containerd.agent import metrics, oci
from tote_containerd.agent.api import PushRequest, PushResult
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import (
    AgentError,
    DataLoss,
    DeadlineExceeded,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    as_one_error,
)
from tote_core.errors import ConfigError, RegistryError
from tote_core.oci.client import (
    UNREACHABLE,
    DigestNotPreserved,
    RegistryClient,
    RegistryStatus,
    RegistryTimeout,
)
from tote_core.oci.upload import Repository

log = logging.getLogger("tote.agent.push")
GC_REF_CONTENT = "containerd.io/gc.ref.content."

READ_CHUNK = 2 * 1024 * 1024
PARALLELISM = 4
HTTP_TIMEOUT, CONNECT_TIMEOUT = 120.0, 15.0


class _Chain:
    """One platform manifest and what it references."""

    def __init__(self, desc: oci.Desc, data: bytes, blobs: list[oci.Desc]) -> None:
        self.desc = desc
        self.data = data
        self.blobs = blobs


class _Counts:
    def __init__(self) -> None:
        self.uploaded = self.skipped = self.mounted = self.bytes = 0


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


def _agent_error(exc: RegistryError) -> AgentError:
    """Core's registry error as the agent error the controller maps back (push.py of the
    plugin): the gRPC code by what happened, the bounded `reason` it has always had."""
    msg = str(exc)
    if isinstance(exc, DigestNotPreserved):
        return DigestMismatch(msg)
    if isinstance(exc, RegistryTimeout):
        return DeadlineExceeded(msg, reason="registry_unreachable")
    if exc.reason == UNREACHABLE:
        return Unavailable(msg, reason="registry_unreachable")
    status = exc.status if isinstance(exc, RegistryStatus) else 0
    if status == 401:
        return Unauthenticated(msg, reason="unauthorized")
    if status == 403:
        return PermissionDenied(msg, reason="unauthorized")
    if status >= 500:
        return Unavailable(msg, reason="registry_error")
    return FailedPrecondition(msg, reason="registry_error")


@contextlib.contextmanager
def _registry_errors() -> Iterator[None]:
    try:
        yield
    except RegistryError as exc:
        raise _agent_error(exc) from exc


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

    # ------------------------------------------------------------------ registry
    async def _push_blob(self, repo: Repository, d: oci.Desc) -> None:
        with _registry_errors():
            outcome = await repo.push_blob(
                d.digest, d.size, lambda offset, n: self._body(d, offset, n),
                self.req.mount_from)
        if outcome == "skipped":
            self.counts.skipped += 1
        elif outcome == "mounted":
            self.counts.mounted += 1
        else:
            self.counts.uploaded += 1
        metrics.PUSH_BLOBS.labels(outcome=outcome).inc()

    # ------------------------------------------------------------------ run
    async def run(self) -> PushResult:
        _check(self.req)
        top, top_bytes, chains, note, platform = await self.plan()
        own = [] if chains else [await self._manifest_chain(top)]
        all_chains = [c for c in (chains or own) if c is not None]
        blobs = list({b.digest: b for c in all_chains for b in c.blobs}.values())
        scheme, _, host = self.req.registry_url.partition("://")
        try:
            client = RegistryClient(ca_pem=self.req.ca_pem, insecure=self.req.insecure,
                                    timeout=HTTP_TIMEOUT, connect_timeout=CONNECT_TIMEOUT,
                                    follow_redirects=False)
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from exc
        async with client.session(host.rstrip("/"), scheme=scheme,
                                  authorization=self.req.authorization) as session:
            repo = Repository(session, self.repo)
            with _registry_errors():
                tagged = await repo.manifest_at(self.req.tag, top.media_type)
            if tagged == top.digest:
                # The tag already names this exact manifest: the registry has every blob.
                self.counts.skipped = len(blobs)
                metrics.PUSH_BLOBS.labels(outcome="skipped").inc(len(blobs))
            else:
                limit = trio.Semaphore(self.req.parallelism or PARALLELISM)

                async def one(d: oci.Desc) -> None:
                    async with limit:
                        await self._push_blob(repo, d)

                with as_one_error("parallel blob uploads"):
                    async with trio.open_nursery() as nursery:
                        for d in sorted(blobs, key=lambda b: -b.size):  # big first: less tail
                            nursery.start_soon(one, d)
                with _registry_errors():
                    for c in chains:  # an index's children, by digest, before the index
                        if await repo.manifest_at(c.desc.digest, c.desc.media_type) is None:
                            await repo.put_manifest(c.desc.digest, c.desc.media_type,
                                                    c.desc.digest, c.data)
                    await repo.put_manifest(self.req.tag, top.media_type, top.digest,
                                            top_bytes)
        n = self.counts
        log.info("pushed %s to %s/%s:%s (%s): %d blobs uploaded, %d mounted, %d already "
                 "there, %d bytes", self.req.digest, self.req.registry_url, self.repo,
                 self.req.tag, top.digest, n.uploaded, n.mounted, n.skipped, n.bytes)
        return PushResult(
            pushed_digest=top.digest, index_pushed=bool(chains),
            manifests=[ch.desc.digest for ch in all_chains], blobs_total=len(blobs),
            blobs_uploaded=n.uploaded, blobs_skipped=n.skipped, blobs_mounted=n.mounted,
            bytes_uploaded=n.bytes, note=note, platform=platform)
