"""The image media types tote reads and writes, declared once.

Why one place: the registry client's `Accept` header, the agent's import, inspection and
push, and the layers the agent regenerates must agree on the same strings.
"""

from __future__ import annotations

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"  # an uncompressed layer

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})

# Every manifest kind, index first: what a tag lookup accepts.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # larger is no manifest tote will read


def accept(media_type: str) -> str:
    """`Accept` for a manifest request: every kind, plus `media_type` if it is another."""
    return ", ".join(sorted({media_type, *INDEX_TYPES, *MANIFEST_TYPES} - {""}))
