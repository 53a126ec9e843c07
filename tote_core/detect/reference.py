"""Image references, parsed and normalised the way the container ecosystem does.

kubelet hands containerd the string from the pod spec; containerd's CRI plugin stores image
records under the *normalised* name (`nginx` → `docker.io/library/nginx:latest`). The Go
original compared raw strings, so `nginx:1.25` never matched `docker.io/library/nginx:1.25`.
Every comparison in tote goes through `parse()`.
"""

from __future__ import annotations

import re

import msgspec

from tote_core.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = {"index.docker.io", "registry-1.docker.io"}
OFFICIAL_PREFIX = "library/"
MAX_NAME_LENGTH = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
# ASCII only: the grammar's \w is Go's ([0-9A-Za-z_]); Python's \w also matches "é", "日".
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")


class ImageReference(msgspec.Struct, frozen=True):
    """A fully normalised reference: domain, path, and a tag and/or digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """`docker.io/library/nginx` — the name without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The full normalised string: repository[:tag][@digest]."""
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def tagged(self) -> str | None:
        """`repository:tag` when there is a tag (a CRI image record name)."""
        return f"{self.repository}:{self.tag}" if self.tag else None

    def with_digest(self, digest: str) -> str:
        """`repository@digest` (a CRI image record name)."""
        return f"{self.repository}@{digest}"

    def __str__(self) -> str:
        return self.name


def is_digest(value: str) -> bool:
    """True for a canonical `sha256:<64 lowercase hex>` (the only digests tote stores)."""
    return bool(_SHA256_RE.fullmatch(value))


def validate_digest(digest: str) -> str:
    """Return a canonical `sha256:<64 lowercase hex>`; raise InvalidReference otherwise."""
    if not is_digest(digest):
        raise InvalidReference(
            f"invalid digest {digest!r}: expected sha256: followed by 64 lowercase hex digits"
        )
    return digest


def parse(text: str) -> ImageReference:
    """Parse and normalise `text`; raise `InvalidReference` with a readable reason.

    Rules follow the distribution reference grammar: the first path component is a
    registry host only if it contains `.` or `:` or is `localhost` (or has upper case);
    Docker Hub names get `docker.io/` and, when single-component, `library/`; a reference
    with neither tag nor digest gets `:latest`.
    """
    if not isinstance(text, str) or not text:
        raise InvalidReference("empty image reference")
    if text != text.strip():
        raise InvalidReference(f"invalid reference {text!r}: surrounding whitespace")
    remainder = text
    digest: str | None = None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidReference(f"invalid reference {text!r}: malformed digest {digest!r}")
        if digest.startswith("sha256:"):
            validate_digest(digest)
    tag: str | None = None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid reference {text!r}: malformed tag {tag!r}")
    if not remainder:
        raise InvalidReference(f"invalid reference {text!r}: missing repository name")
    first, sep, rest = remainder.partition("/")
    if sep and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    ):
        domain, path = first, rest
        if not _DOMAIN_RE.fullmatch(domain):
            raise InvalidReference(f"invalid reference {text!r}: malformed registry {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, remainder
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    if path.lower() != path:
        raise InvalidReference(
            f"invalid reference {text!r}: repository name must be lowercase"
        )
    if not _PATH_RE.fullmatch(path):
        raise InvalidReference(f"invalid reference {text!r}: malformed repository {path!r}")
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReference(
            f"invalid reference {text!r}: repository name longer than {MAX_NAME_LENGTH}"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest)


def parse_normalised(text: str) -> ImageReference:
    """Parse a reference already in normalised form: what containerd's CRI plugin stores as
    image record names and what tote's processes send each other (`docker.io/library/nginx:1.25`,
    `registry:5000/app@sha256:…`, `docker.io/tote/app`).

    `parse()` must leave it as written, so anything it would rewrite (no registry host, a
    Docker Hub name without `library/`, a legacy Docker Hub host) is `InvalidReference`
    naming the normalised form. One exception: with neither tag nor digest the reference
    stays untagged (`tag` None) — such a record name is a name of its own, not `:latest`.
    """
    ref = parse(text)
    if text == ref.name:
        return ref
    if ref.digest is None and ref.tag == "latest" and text == ref.repository:
        return msgspec.structs.replace(ref, tag=None)
    raise InvalidReference(f"invalid reference {text!r}: not normalised (the normalised form "
                           f"is {ref.name})")


def digest_of_image_id(image_id: str) -> str | None:
    """Extract the digest from a container status `imageID` (`docker.io/x@sha256:…`)."""
    if "@" in image_id:
        candidate = image_id.rsplit("@", 1)[1]
    elif image_id.startswith("sha256:"):
        candidate = image_id
    else:
        return None
    return candidate if _SHA256_RE.fullmatch(candidate) else None
