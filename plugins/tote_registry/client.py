"""The one registry client: TLS (system roots + a CA bundle, or insecure), scheme choice,
auth (`Bearer` token exchange, `Basic`) and the distribution-API reads tote does itself.

Used by tag resolution (HEAD manifest) and by the backup push, which asks it for a scoped
`Authorization` value to hand to the pushing agent: the controller reads the Secret and
talks to the token endpoint, so an agent never sees a password for a token-auth registry.

Errors are `tote_core.errors.RegistryError` with a bounded `reason` (unauthorized,
not_found, unreachable, error); httpx's exceptions are mapped here and nowhere else.
Credentials are never logged or put into an error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx

from tote_core.detect.reference import validate_digest
from tote_core.errors import InvalidReference, RegistryError
from tote_registry.auth import Challenge, Credentials, basic_header, parse_challenges

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

UNAUTHORIZED, NOT_FOUND, UNREACHABLE, ERROR = "unauthorized", "not_found", "unreachable", "error"


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


@contextlib.contextmanager
def _mapped(host: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise RegistryError(f"{host} timed out: {type(exc).__name__}", reason=UNREACHABLE
                            ) from exc
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        raise RegistryError(f"cannot reach {host}: {type(exc).__name__}: {exc}",
                            reason=UNREACHABLE) from exc


class RegistryClient:
    """Settings shared by every session: timeout, TLS trust, insecure."""

    def __init__(self, *, ca_file: str = "", insecure: bool = False, timeout: float = 5.0
                 ) -> None:
        self.insecure = insecure
        self.timeout = timeout
        self.ca_pem = Path(ca_file).read_text() if ca_file else ""
        self._verify: ssl.SSLContext | bool = False
        if not insecure:
            ctx = ssl.create_default_context()  # system roots ...
            if ca_file:
                ctx.load_verify_locations(cafile=ca_file)  # ... plus the bundle
            self._verify = ctx

    @contextlib.asynccontextmanager
    async def session(self, host: str, creds: Credentials | None = None
                      ) -> AsyncIterator[Session]:
        """A session with one registry `host` (`host[:port]`, the API host) and credentials."""
        async with httpx.AsyncClient(verify=self._verify, timeout=self.timeout,
                                     follow_redirects=True, trust_env=False) as http:
            yield Session(self, http, host, creds)


class Session:
    def __init__(self, client: RegistryClient, http: httpx.AsyncClient, host: str,
                 creds: Credentials | None) -> None:
        self.client = client
        self.http = http
        self.host = host
        self.creds = creds
        self._base = ""
        self._ping: httpx.Response | None = None
        self._auth: dict[tuple[str, ...], str] = {}

    async def base(self) -> str:
        """`https://host` — or, with insecure, `http://host` when the registry speaks no TLS."""
        if not self._base:
            schemes = ["https", "http"] if self.client.insecure else ["https"]
            last: BaseException | None = None
            for scheme in schemes:
                try:
                    with _mapped(self.host):
                        self._ping = await self.http.get(f"{scheme}://{self.host}/v2/")
                    self._base = f"{scheme}://{self.host}"
                    break
                except RegistryError as exc:
                    last = exc.__cause__ or exc  # a plain-HTTP registry refuses TLS
            else:
                raise RegistryError(f"cannot reach {self.host}: {type(last).__name__}: {last}",
                                    reason=UNREACHABLE)
        return self._base

    async def authorization(self, scopes: list[str]) -> str:
        """An `Authorization` value valid for `scopes` ("" when the registry needs none).

        Answers the `/v2/` challenge: `Bearer` → the token endpoint (with Basic credentials
        if any, all scopes in one token); `Basic` → the credentials, checked against `/v2/`.
        """
        key = tuple(scopes)
        if key in self._auth:
            return self._auth[key]
        base = await self.base()
        assert self._ping is not None
        value = await self._answer(self._ping, scopes, base)
        self._auth[key] = value
        return value

    async def _answer(self, resp: httpx.Response, scopes: list[str], base: str) -> str:
        if resp.status_code != 401:
            return ""
        challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            return "Bearer " + await self._token(bearer, scopes)
        if basic is not None and self.creds is not None:
            value = basic_header(self.creds)
            with _mapped(self.host):
                check = await self.http.get(f"{base}/v2/", headers={"Authorization": value})
            if check.status_code in (401, 403):
                raise RegistryError(f"{self.host} refused the credentials ({check.status_code})",
                                    reason=UNAUTHORIZED)
            return value
        raise RegistryError(f"{self.host} requires credentials; none matched",
                            reason=UNAUTHORIZED)

    async def _token(self, challenge: Challenge, scopes: list[str]) -> str:
        realm = challenge.realm
        if not realm.startswith(("https://", "http://")):
            raise RegistryError("bearer challenge without a usable realm")
        params: list[tuple[str, str | int | float | bool | None]] = [("scope", s) for s in
                                         scopes or [challenge.params.get("scope", "")] if s]
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        auth = httpx.BasicAuth(self.creds.username, self.creds.password) if self.creds else None
        with _mapped(self.host):
            resp = await self.http.get(realm, params=params, auth=auth)
        if resp.status_code in (401, 403):
            raise RegistryError(f"token endpoint answered {resp.status_code}",
                                reason=UNAUTHORIZED)
        if resp.status_code != 200:
            raise RegistryError(f"token endpoint answered {resp.status_code}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise RegistryError("token endpoint answered no JSON") from exc
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError("token endpoint answered no token")
        return token

    async def _manifest(self, url: str, headers: dict[str, str]) -> httpx.Response:
        with _mapped(self.host):
            resp = await self.http.head(url, headers=headers)
            if resp.status_code == 200 and resp.headers.get("Docker-Content-Digest"):
                return resp
            if resp.status_code in (200, 400, 405, 501):
                # No digest header, or HEAD not supported: fetch the manifest itself.
                resp = await self.http.get(url, headers=headers)
        return resp

    async def manifest_digest(self, repo: str, ref: str) -> str:
        """The digest `repo:ref` names (HEAD, else GET and hash the bytes)."""
        base = await self.base()
        url = f"{base}/v2/{repo}/manifests/{ref}"
        headers = {"Accept": MANIFEST_ACCEPT}
        auth = await self.authorization([pull_scope(repo)])
        if auth:
            headers["Authorization"] = auth
        resp = await self._manifest(url, headers)
        if resp.status_code == 401 and not auth:
            # /v2/ was open, this repository is not: answer its own challenge once.
            auth = await self._answer(resp, [pull_scope(repo)], base)
            headers["Authorization"] = auth
            resp = await self._manifest(url, headers)
        if resp.status_code in (401, 403):
            raise RegistryError(f"registry answered {resp.status_code}", reason=UNAUTHORIZED)
        if resp.status_code == 404:
            raise RegistryError("manifest unknown", reason=NOT_FOUND)
        if resp.status_code != 200:
            raise RegistryError(f"registry answered {resp.status_code}")
        digest = resp.headers.get("Docker-Content-Digest", "")
        if not digest:
            body = resp.content
            if not body or len(body) > MAX_MANIFEST_BYTES:
                raise RegistryError("no digest header and no usable manifest body")
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        try:
            return validate_digest(digest.strip())
        except InvalidReference as exc:
            raise RegistryError(f"registry sent an invalid digest: {exc}") from exc
