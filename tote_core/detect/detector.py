"""Pod status → image failures tote may act on, with a classification for each.

Pure and synchronous so it is cheap to run on every pod update and easy to test exhaustively.
"""

from __future__ import annotations

import re
from enum import Enum

import msgspec

from tote_core.detect.reference import ImageReference, digest_of_image_id, parse
from tote_core.errors import InvalidReference
from tote_core.structs.kube import Container, ContainerStatus, Pod

PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff"})
CORRUPT_REASON = "CreateContainerError"

_AUTH_RE = re.compile(
    r"\b(401|403)\b|unauthori[sz]ed|\bdenied\b|authentication required|"
    r"\bforbidden\b|no basic auth credentials|insufficient_scope",
    re.IGNORECASE,
)
# Each containerd words it its own way: 1.6 fails a missing config blob at "resolve rootfs" and
# a missing layer blob of a never-unpacked image at "extract layer … failed to get reader";
# 2.x says "error unpacking image: … content digest …: not found" for both.
_CORRUPT_RE = re.compile(
    r"(failed to resolve rootfs|failed to extract layer|error unpacking image)"
    r".*content digest \S+:? not found",
    re.IGNORECASE | re.DOTALL,
)


class Verdict(Enum):
    """What the failure means for tote."""

    SALVAGE = "salvage"  # a pull failure an import can fix
    CORRUPT = "corrupt"  # image record present, content missing
    AUTH = "auth"  # registry refused credentials: not salvaged by default
    ALWAYS = "always"  # imagePullPolicy Always: an import cannot help
    INVALID = "invalid"  # the reference does not parse


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """One failing container of a pod."""

    container: str
    init_container: bool
    raw_image: str
    reference: ImageReference | None
    verdict: Verdict
    reason: str  # kubelet's waiting reason
    message: str  # kubelet's waiting message
    detail: str = ""  # why not actionable, for events

    @property
    def digest(self) -> str | None:
        return self.reference.digest if self.reference else None


def is_auth_failure(message: str) -> bool:
    return bool(_AUTH_RE.search(message))


def is_corrupt_content(message: str) -> bool:
    return bool(_CORRUPT_RE.search(message))


def _classify(
    spec: Container | None, status: ContainerStatus, init: bool
) -> Failure | None:
    waiting = status.state.waiting
    if waiting is None:
        return None
    reason, message = waiting.reason, waiting.message
    if reason in PULL_REASONS:
        corrupt = False
    elif reason == CORRUPT_REASON and is_corrupt_content(message):
        corrupt = True
    else:
        return None
    raw = (spec.image if spec and spec.image else "") or status.image

    def failure(verdict: Verdict, ref: ImageReference | None, detail: str = "") -> Failure:
        return Failure(
            container=status.name, init_container=init, raw_image=raw, reference=ref,
            verdict=verdict, reason=reason, message=message, detail=detail,
        )

    try:
        ref = parse(raw)
    except InvalidReference as exc:
        return failure(Verdict.INVALID, None, str(exc))
    # A status imageID carries the digest kubelet resolved earlier (e.g. a corrupt record).
    if ref.digest is None and status.image_id:
        status_digest = digest_of_image_id(status.image_id)
        if status_digest and corrupt:
            ref = ImageReference(ref.domain, ref.path, ref.tag, status_digest)
    if corrupt:
        return failure(Verdict.CORRUPT, ref)
    if spec is not None and spec.image_pull_policy == "Always":
        return failure(
            Verdict.ALWAYS,
            ref,
            "imagePullPolicy is Always: kubelet pulls from the registry even when the image "
            "is present, so importing it cannot help; use IfNotPresent",
        )
    if is_auth_failure(message):
        return failure(
            Verdict.AUTH,
            ref,
            "the registry refused authorisation; tote does not hand an image to a pod "
            "that lacks credentials for it (see --salvage-on-auth-failure)",
        )
    return failure(Verdict.SALVAGE, ref)


def detect(pod: Pod) -> list[Failure]:
    """All image failures of `pod`, init containers first (they block the rest)."""
    if pod.metadata.deletion_timestamp:
        return []
    out: list[Failure] = []
    for init, specs, statuses in (
        (True, pod.spec.init_containers, pod.status.init_container_statuses),
        (False, pod.spec.containers, pod.status.container_statuses),
    ):
        by_name = {c.name: c for c in specs}
        for status in statuses:
            failure = _classify(by_name.get(status.name), status, init)
            if failure is not None:
                out.append(failure)
    return out
