"""Image records on this node (containerd's image store): list, resolve a tag, remove, pin.

Pinning is CRI's own label, `io.cri-containerd.pinned=pinned`: containerd's CRI reports such
an image as pinned, and kubelet's image GC (disk pressure, `imageMaximumGCAge`) skips it —
a salvaged image must outlive a registry outage. Only the label changes; the record's target
and its other labels stay as they are."""

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


PIN_LABEL = "io.cri-containerd.pinned"
PINNED = "pinned"


async def _names(cd: ContainerdClient, names: list[str], digest: str) -> list[str]:
    """`names` (checked) plus every record whose target is `digest`, each once."""
    for n in names:
        if not oci.is_digest(n):
            oci.parse_ref(n)
    todo = list(names)
    if digest:
        flt = [f"target.digest=={oci.check_digest(digest)}"]
        todo += [r.name for r in await cd.list_images(flt)]
    return list(dict.fromkeys(todo))


async def set_pinned(cd: ContainerdClient, names: list[str], digest: str, pinned: bool
                     ) -> list[str]:
    """Set (or clear) the pin label; the names whose label changed. Absent names are
    skipped: a record removed meanwhile needs no unpinning."""
    todo = await _names(cd, names, digest)
    if not todo:
        raise InvalidArgument("nothing to (un)pin: give names or a digest")
    changed = []
    for n in todo:
        rec = await cd.get_image(n)
        if rec is None or (rec.labels.get(PIN_LABEL) == PINNED) == pinned:
            continue
        await cd.set_image_label(rec, PIN_LABEL, PINNED if pinned else None)
        changed.append(n)
    return changed


async def remove_image(cd: ContainerdClient, names: list[str], digest: str) -> list[str]:
    todo = await _names(cd, names, digest)
    if not todo:
        raise InvalidArgument("nothing to remove: give names or a digest")
    removed = []
    for n in todo:
        if await cd.delete_image(n):
            removed.append(n)
    return removed
