"""The push steps of the OCI distribution spec, on one repository of a registry session.

Blobs: `HEAD` → already in the repository, skip; else, if a repository in `mount_from`
holds it, a cross-repository mount (`POST ?mount=&from=`, 201; a 202 means the registry
refused the mount and opened an upload instead); else `POST` an upload and send the bytes —
one `PUT ?digest=` for blobs up to `MONOLITHIC_MAX`, `PATCH` chunks of `CHUNK` then
`PUT ?digest=` above that, each step at the `Location` the registry sent last. Manifests:
`HEAD` to see what a reference names, `PUT` of the original bytes. The registry must answer
with the same digest (`DigestNotPreserved` otherwise).

The bytes come from the caller (`Body`: an async iterator of `length` bytes from
`offset`), so a layer is streamed from wherever it is and never held here. No retries: a
step that fails raises `RegistryError` (see client.py) and the caller reports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal

import httpx

from tote_core.errors import RegistryError
from tote_core.oci.client import DigestNotPreserved, Session, status_error
from tote_core.oci.mediatypes import accept

MONOLITHIC_MAX = 128 * 1024 * 1024
CHUNK = 128 * 1024 * 1024
MAX_MOUNT_SOURCES = 8

Body = Callable[[int, int], AsyncIterator[bytes]]  # (offset, length) → the bytes
Outcome = Literal["skipped", "mounted", "uploaded"]
_OCTETS = "application/octet-stream"


class Repository:
    """One repository `name` of the registry `session` talks to."""

    def __init__(self, session: Session, name: str) -> None:
        self.session = session
        self.name = name

    def _upload_url(self, resp: httpx.Response, what: str) -> httpx.URL:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"registry sent no Location for {what}")
        return resp.request.url.join(loc)

    async def blob_exists(self, digest: str, repo: str = "") -> bool:
        """Whether this repository (or `repo` of the same registry) holds `digest`."""
        path = f"/v2/{repo or self.name}/blobs/{digest}"
        resp = await self.session.send("HEAD", path, f"HEAD blob {digest}")
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise status_error(resp, f"HEAD {path}")

    async def _start_upload(self, digest: str, mount_from: Sequence[str]) -> httpx.URL | None:
        """An upload URL, or None when the blob was mounted from another repository."""
        path = f"/v2/{self.name}/blobs/uploads/"
        for src in mount_from[:MAX_MOUNT_SOURCES]:
            if src == self.name or not await self.blob_exists(digest, src):
                continue
            what = f"mount {digest} from {src}"
            resp = await self.session.send("POST", path, what,
                                           params={"mount": digest, "from": src})
            if resp.status_code == 201:
                return None
            if resp.status_code == 202:  # mount refused; the registry opened an upload
                return self._upload_url(resp, what)
            raise status_error(resp, what)
        what = f"POST {path}"
        resp = await self.session.send("POST", path, what)
        if resp.status_code != 202:
            raise status_error(resp, what)
        return self._upload_url(resp, what)

    async def _upload(self, digest: str, size: int, body: Body, url: httpx.URL) -> None:
        offset = 0
        if size > MONOLITHIC_MAX:
            while offset < size:
                n = min(CHUNK, size - offset)
                what = f"PATCH {digest} [{offset}, {offset + n})"
                resp = await self.session.send(
                    "PATCH", url, what, content=body(offset, n),
                    headers={"Content-Type": _OCTETS, "Content-Length": str(n),
                             "Content-Range": f"{offset}-{offset + n - 1}"})
                if resp.status_code != 202:
                    raise status_error(resp, what)
                url = self._upload_url(resp, what)
                offset += n
        what = f"PUT {digest}"
        rest = body(offset, size - offset) if offset < size else b""
        resp = await self.session.send(
            "PUT", url.copy_merge_params({"digest": digest}), what, content=rest,
            headers={"Content-Type": _OCTETS, "Content-Length": str(size - offset)})
        if resp.status_code != 201:
            raise status_error(resp, what)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise DigestNotPreserved(f"registry stored {digest} as {got}")

    async def push_blob(self, digest: str, size: int, body: Body,
                        mount_from: Sequence[str] = ()) -> Outcome:
        """Make the repository hold blob `digest` of `size` bytes: how it came to."""
        if await self.blob_exists(digest):
            return "skipped"
        url = await self._start_upload(digest, mount_from)
        if url is None:
            return "mounted"
        await self._upload(digest, size, body, url)
        return "uploaded"

    async def manifest_at(self, ref: str, media_type: str) -> str | None:
        """The digest tag or digest `ref` names here, None when it names nothing."""
        path = f"/v2/{self.name}/manifests/{ref}"
        what = f"HEAD {path}"
        resp = await self.session.send("HEAD", path, what,
                                       headers={"Accept": accept(media_type)})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise status_error(resp, what)
        return resp.headers.get("Docker-Content-Digest") or None

    async def put_manifest(self, ref: str, media_type: str, digest: str, data: bytes) -> None:
        """Store manifest `data` (its original bytes, digest `digest`) under `ref`."""
        path = f"/v2/{self.name}/manifests/{ref}"
        what = f"PUT {path}"
        resp = await self.session.send("PUT", path, what, content=data,
                                       headers={"Content-Type": media_type})
        if resp.status_code not in (200, 201):
            raise status_error(resp, what)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise DigestNotPreserved(f"registry stored manifest {digest} as {got}: digest not "
                                     "preserved")
