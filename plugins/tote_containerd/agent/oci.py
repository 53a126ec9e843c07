"""Pure OCI/Docker image logic: digests, manifests, platforms, GC labels; references through
core's one parser (tote_core/detect/reference.py), media types from core's one declaration
(tote_core/oci/mediatypes.py)."""

from __future__ import annotations

import json
import platform as _platform
import re
from typing import Any

import msgspec

from tote_containerd.agent.errors import FailedPrecondition, InvalidArgument
from tote_core.detect import reference
from tote_core.detect.reference import ImageReference
from tote_core.errors import InvalidReference
from tote_core.oci import mediatypes

MT_OCI_INDEX = mediatypes.OCI_INDEX
MT_OCI_MANIFEST = mediatypes.OCI_MANIFEST
INDEX_TYPES = mediatypes.INDEX_TYPES
MANIFEST_TYPES = mediatypes.MANIFEST_TYPES
MAX_MANIFEST_BYTES = mediatypes.MAX_MANIFEST_BYTES

CRI_LABEL = "io.cri-containerd.image"


def check_digest(value: str, what: str = "digest") -> str:
    if not isinstance(value, str) or not reference.is_digest(value):
        raise InvalidArgument(f"invalid {what} {value!r}: expected sha256:<64 hex digits>")
    return value


is_digest = reference.is_digest


def parse_ref(value: str) -> ImageReference:
    """Core's parser for a normalised reference (`host/path[:tag][@sha256:…]`, the host
    explicit; `reference.parse_normalised`), its refusal as the agent's InvalidArgument."""
    try:
        ref = reference.parse_normalised(value)
    except InvalidReference as exc:
        raise InvalidArgument(str(exc)) from None
    if ref.digest is not None and not is_digest(ref.digest):
        raise InvalidArgument(f"invalid image reference {value!r}: only sha256 digests")
    return ref


def node_platform() -> str:
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm/v7", "ppc64le": "ppc64le", "s390x": "s390x"}.get(machine, machine)
    return f"linux/{arch}"


def check_platform(value: str) -> str:
    parts = value.split("/")
    if not 2 <= len(parts) <= 3 or not all(re.fullmatch(r"[a-z0-9_]+", p) for p in parts):
        raise InvalidArgument(f"invalid platform {value!r}: expected os/arch[/variant]")
    return value


def _platform_matches(p: dict[str, Any], want: str) -> bool:
    parts = want.split("/")
    if p.get("os") != parts[0] or p.get("architecture") != parts[1]:
        return False
    if len(parts) == 3:
        return bool(p.get("variant", "") == parts[2])
    return True


class Desc(msgspec.Struct, frozen=True):
    media_type: str
    digest: str
    size: int


def _desc(d: Any, where: str) -> Desc:
    if not isinstance(d, dict):
        raise FailedPrecondition(f"{where}: descriptor is not an object")
    digest = d.get("digest")
    size = d.get("size")
    if not isinstance(digest, str) or not is_digest(digest):
        raise FailedPrecondition(f"{where}: unsupported or invalid digest {digest!r}")
    if not isinstance(size, int) or size < 0:
        raise FailedPrecondition(f"{where}: invalid size {size!r}")
    return Desc(media_type=str(d.get("mediaType", "")), digest=digest, size=size)


descriptor = _desc  # public name for other agent modules


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise FailedPrecondition(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FailedPrecondition(f"{what} is not a JSON object")
    return doc


def media_type_of(doc: dict[str, Any], fallback: str) -> str:
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if "manifests" in doc:
        return MT_OCI_INDEX
    if "layers" in doc or "config" in doc:
        return MT_OCI_MANIFEST
    return fallback


def select_manifest(index: dict[str, Any], want: str) -> Desc | None:
    """The index entry for platform `want` (first match), or None."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise FailedPrecondition("index has no manifests list")
    for n, e in enumerate(entries):
        plat = e.get("platform") if isinstance(e, dict) else None
        if isinstance(plat, dict) and _platform_matches(plat, want):
            return _desc(e, f"index.manifests[{n}]")
    return None


def manifest_children(manifest: dict[str, Any]) -> tuple[Desc, list[Desc]]:
    """(config, layers) of an image manifest."""
    cfg = _desc(manifest.get("config"), "manifest.config")
    layers_raw = manifest.get("layers")
    if not isinstance(layers_raw, list):
        raise FailedPrecondition("manifest has no layers list")
    return cfg, [_desc(layer, f"manifest.layers[{n}]") for n, layer in enumerate(layers_raw)]


def gc_labels_manifest(config: Desc, layers: list[Desc]) -> dict[str, str]:
    labels = {"containerd.io/gc.ref.content.config": config.digest}
    for n, layer in enumerate(layers):
        labels[f"containerd.io/gc.ref.content.l.{n}"] = layer.digest
    return labels


def gc_labels_index(index: dict[str, Any], present: set[str]) -> dict[str, str]:
    """GC labels for an index: only for manifests this node holds (siblings are absent)."""
    labels: dict[str, str] = {}
    for n, e in enumerate(index.get("manifests") or []):
        if isinstance(e, dict) and e.get("digest") in present:
            labels[f"containerd.io/gc.ref.content.m.{n}"] = str(e["digest"])
    return labels


def image_names(ref: str | None, repo_hint: str | None, digest: str, config_digest: str
                ) -> list[str]:
    """The three records CRI keeps: the ref as asked, repo@digest, and the config-digest ID."""
    names: list[str] = []
    repo = repo_hint
    if ref:
        repo = parse_ref(ref).repository
        names.append(ref)
    if repo:
        by_digest = f"{repo}@{digest}"
        if by_digest not in names:
            names.append(by_digest)
    names.append(config_digest)
    return names
