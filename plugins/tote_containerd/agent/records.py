"""Image records on this node (containerd's image store): list, resolve a tag, remove."""

from __future__ import annotations

from tote_containerd.agent import oci
from tote_containerd.agent.api import ImageRecord, Resolved
from tote_containerd.agent.containerd import ContainerdClient
from tote_containerd.agent.errors import InvalidArgument


async def list_images(cd: ContainerdClient, digest: str = "") -> list[ImageRecord]:
    filters = [f"target.digest=={oci.check_digest(digest)}"] if digest else []
    return [ImageRecord(name=r.name, digest=r.target.digest, media_type=r.target.media_type,
                        size=r.target.size, labels=r.labels)
            for r in await cd.list_images(filters)]


async def resolve_tag(cd: ContainerdClient, ref: str) -> Resolved:
    oci.parse_ref(ref)
    rec = await cd.get_image(ref)
    if rec is None:
        return Resolved(found=False)
    return Resolved(found=True, digest=rec.target.digest, media_type=rec.target.media_type)


async def remove_image(cd: ContainerdClient, names: list[str], digest: str) -> list[str]:
    for n in names:
        if not oci.is_digest(n):
            oci.parse_ref(n)
    todo = list(names)
    if digest:
        flt = [f"target.digest=={oci.check_digest(digest)}"]
        todo += [r.name for r in await cd.list_images(flt)]
    if not todo:
        raise InvalidArgument("nothing to remove: give names or a digest")
    removed = []
    for n in dict.fromkeys(todo):
        if await cd.delete_image(n):
            removed.append(n)
    return removed
