"""Pure parsing for registry auth: docker config `auths` (pull Secrets), registry hosts,
`WWW-Authenticate` challenges and token scopes.

Nothing here does I/O, and nothing here logs: the values are credentials.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({
    "docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com",
})  # fmt: skip
DOCKER_HUB_API = "registry-1.docker.io"

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
DOCKERCFG = "kubernetes.io/dockercfg"


@dataclass(frozen=True)
class Credentials:
    username: str = field(repr=False)
    password: str = field(repr=False)

    def __repr__(self) -> str:  # never print a secret, even in a traceback
        return "Credentials(<redacted>)"


@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def basic_header(creds: Credentials) -> str:
    """`Authorization` value for HTTP Basic auth."""
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def canonical_host(host: str) -> str:
    """`https://index.docker.io/v1/` → `docker.io`; `Reg.example:5000/x` → `reg.example:5000`."""
    h = host.strip()
    if "://" in h:
        h = h.split("://", 1)[1]
    h = h.split("/", 1)[0].lower()
    return DOCKER_HUB if h in DOCKER_HUB_ALIASES else h


def api_host(domain: str) -> str:
    """The host to talk the distribution API to for a normalised reference domain."""
    return DOCKER_HUB_API if canonical_host(domain) == DOCKER_HUB else domain


def _decode_auth(entry: dict[str, Any]) -> Credentials | None:
    user = entry.get("username")
    password = entry.get("password")
    if isinstance(user, str) and isinstance(password, str) and (user or password):
        return Credentials(user, password)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            raw = base64.b64decode(auth, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = raw.partition(":")
        if sep:
            return Credentials(user, password)
    return None


def auths_from_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """The `auths` map of a pull Secret (dockerconfigjson, or the legacy dockercfg)."""
    data = secret.get("data") or {}
    kind = secret.get("type", "")
    key = ".dockercfg" if kind == DOCKERCFG else ".dockerconfigjson"
    if kind not in (DOCKERCONFIGJSON, DOCKERCFG) or not isinstance(data, dict):
        return {}
    blob = data.get(key)
    if not isinstance(blob, str):
        return {}
    try:
        doc = json.loads(base64.b64decode(blob))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    auths = doc.get("auths") if kind == DOCKERCONFIGJSON else doc
    return auths if isinstance(auths, dict) else {}


def credentials_for(auths: dict[str, Any], domain: str) -> Credentials | None:
    """The credentials an `auths` map holds for `domain` (docker.io aliases match)."""
    want = canonical_host(domain)
    for key, entry in auths.items():
        if isinstance(key, str) and isinstance(entry, dict) and canonical_host(key) == want:
            creds = _decode_auth(entry)
            if creds is not None:
                return creds
    return None


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*("((?:[^"\\]|\\.)*)"|[^,\s]*)\s*,?')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse `WWW-Authenticate` (RFC 7235): `Bearer realm="…",service="…",scope="…"`.

    Several challenges may share one header (`Basic realm="x", Bearer realm="y"`).
    Parameter names are lower-cased; quoted values unescaped.
    """
    out: list[Challenge] = []
    pos = 0
    text = header or ""
    while pos < len(text):
        m = _SCHEME_RE.match(text, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(text):
            pm = _PARAM_RE.match(text, pos)
            if not pm:
                break
            # `Basic realm="x", Bearer …`: a token not followed by `=` starts a new challenge.
            params[pm.group(1).lower()] = (
                re.sub(r"\\(.)", r"\1", pm.group(3)) if pm.group(3) is not None
                else pm.group(2)
            )
            pos = pm.end()
        out.append(Challenge(scheme, params))
        while pos < len(text) and text[pos] in ", ":
            pos += 1
    return out
