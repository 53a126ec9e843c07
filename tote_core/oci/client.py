"""The one registry HTTP client: TLS trust (system roots plus a CA bundle, or insecure),
the scheme, auth (`Bearer` token exchange, `Basic`), requests that carry credentials only to
the registry's own origin, and the read tote does itself (the digest a tag names).

Two callers, one protocol: the registry plugin (tag lookups, the reaper's check, and the
backup push's token exchange — the controller reads the Secret and talks to the token
endpoint, so an agent never sees a password for a token-auth registry) and the agent's push,
which arrives with a ready `Authorization` value and a scheme (`session(..., scheme=,
authorization=)`) and uses `upload.Repository` on the session.

Errors are `RegistryError` with a bounded `reason` (unauthorized, not_found, unreachable,
error); httpx's exceptions are mapped here and nowhere else. Three subclasses keep what a
caller at a boundary needs to say more: `RegistryStatus.status` (the HTTP status),
`RegistryTimeout` and `DigestNotPreserved`. Credentials are never logged or put into an
error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

from tote_core.detect.reference import validate_digest
from tote_core.errors import ConfigError, InvalidReference, RegistryError
from tote_core.oci.auth import Challenge, Credentials, basic_header, parse_challenges, pull_scope
from tote_core.oci.mediatypes import MANIFEST_ACCEPT, MAX_MANIFEST_BYTES

UNAUTHORIZED, NOT_FOUND, UNREACHABLE, ERROR = "unauthorized", "not_found", "unreachable", "error"


class RegistryStatus(RegistryError):
    """The registry answered a status the step cannot go on from; `status` is that status
    (401/403 → unauthorized, 404 → not_found, anything else → error)."""

    def __init__(self, message: str, *, status: int) -> None:
        reason = {401: UNAUTHORIZED, 403: UNAUTHORIZED, 404: NOT_FOUND}.get(status, ERROR)
        super().__init__(message, reason=reason)
        self.status = status


class RegistryTimeout(RegistryError):
    """A request to the registry ran out of time (reason unreachable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=UNREACHABLE)


class DigestNotPreserved(RegistryError):
    """The registry stored pushed bytes under another digest than theirs."""


def status_error(resp: httpx.Response, what: str) -> RegistryStatus:
    """A registry answer the step cannot continue from, with the start of its body."""
    body = ""
    with contextlib.suppress(Exception):
        body = resp.text[:300].strip()
    msg = f"registry answered {resp.status_code} to {what}" + (f": {body}" if body else "")
    return RegistryStatus(msg, status=resp.status_code)


def _why(exc: BaseException) -> str:
    """The first non-empty message along the cause chain (httpx's ConnectError wrapping a TLS
    verification failure has none of its own)."""
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return f"{type(seen).__name__}: {seen}"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


@contextlib.contextmanager
def _mapped(host: str, what: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise RegistryTimeout(f"registry {host} timed out ({what}): {_why(exc)}") from exc
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        raise RegistryError(f"cannot reach registry {host} ({what}): {_why(exc)}",
                            reason=UNREACHABLE) from exc


def _trust(ca_pem: str, insecure: bool, what: str) -> ssl.SSLContext | bool:
    if insecure:
        return False
    ctx = ssl.create_default_context()  # system roots ...
    if ca_pem:
        try:
            ctx.load_verify_locations(cadata=ca_pem)  # ... plus the bundle
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{what} is not a usable PEM bundle: {exc}") from exc
    return ctx


class RegistryClient:
    """Settings shared by every session: timeouts, TLS trust, insecure, redirects.

    `ca_file` is read once (its text is `ca_pem`, which the controller hands the pushing
    agent); a bundle that holds no certificate is a `ConfigError`. `connect_timeout`
    defaults to `timeout`. `follow_redirects` is off for the push: a streamed body cannot be
    sent twice, and the upload steps follow `Location` themselves.
    """

    def __init__(self, *, ca_file: str = "", ca_pem: str = "", insecure: bool = False,
                 timeout: float = 5.0, connect_timeout: float | None = None,
                 follow_redirects: bool = True) -> None:
        self.insecure = insecure
        self.timeout = timeout
        self.ca_pem = ca_pem or (Path(ca_file).read_text() if ca_file else "")
        self.follow_redirects = follow_redirects
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout or timeout)
        self._verify = _trust(self.ca_pem, insecure, ca_file or "ca_pem")

    @contextlib.asynccontextmanager
    async def session(self, host: str, creds: Credentials | None = None, *, scheme: str = "",
                      authorization: str = "") -> AsyncIterator[Session]:
        """A session with one registry `host` (`host[:port]`, the API host): with
        credentials to answer its challenges, or with a known `scheme` and a ready
        `authorization` value sent on every request to it."""
        async with httpx.AsyncClient(verify=self._verify, timeout=self._timeout,
                                     follow_redirects=self.follow_redirects,
                                     trust_env=False) as http:
            yield Session(self, http, host, creds, scheme=scheme, authorization=authorization)


class Session:
    def __init__(self, client: RegistryClient, http: httpx.AsyncClient, host: str,
                 creds: Credentials | None, *, scheme: str = "", authorization: str = ""
                 ) -> None:
        self.client = client
        self.http = http
        self.host = host
        self.creds = creds
        self._base = f"{scheme}://{host}" if scheme else ""
        self._given = authorization
        self._ping: httpx.Response | None = None
        self._auth: dict[tuple[str, ...], str] = {}

    async def base(self) -> str:
        """`https://host` — or, with insecure, `http://host` when the registry speaks no TLS."""
        if not self._base:
            schemes = ["https", "http"] if self.client.insecure else ["https"]
            last: RegistryError | None = None
            for scheme in schemes:
                try:
                    with _mapped(self.host, "GET /v2/"):
                        self._ping = await self.http.get(f"{scheme}://{self.host}/v2/")
                    self._base = f"{scheme}://{self.host}"
                    break
                except RegistryError as exc:
                    last = exc  # a plain-HTTP registry refuses TLS
            else:
                assert last is not None
                raise last
        return self._base

    async def send(self, method: str, url: str | httpx.URL, what: str, *,
                   headers: dict[str, str] | None = None, authorization: str = "",
                   **kw: Any) -> httpx.Response:
        """One request to a path of the registry or a URL it sent (an upload `Location`).
        The `Authorization` value (this call's, else the session's) goes only to the
        registry itself, never to another origin a `Location` may point at."""
        base = httpx.URL(await self.base())
        target = base.join(url)
        headers = dict(headers or {})
        value = authorization or self._given
        if value and (target.scheme, target.host, target.port) == (base.scheme, base.host,
                                                                   base.port):
            headers["Authorization"] = value
        with _mapped(self.host, what):
            return await self.http.request(method, target, headers=headers, **kw)

    async def authorization(self, scopes: list[str]) -> str:
        """An `Authorization` value valid for `scopes` ("" when the registry needs none).

        Answers the `/v2/` challenge: `Bearer` → the token endpoint (with Basic credentials
        if any, all scopes in one token); `Basic` → the credentials, checked against `/v2/`.
        A session opened with a ready value answers with it.
        """
        if self._given:
            return self._given
        key = tuple(scopes)
        if key in self._auth:
            return self._auth[key]
        await self.base()
        assert self._ping is not None
        value = await self._answer(self._ping, scopes)
        self._auth[key] = value
        return value

    async def _answer(self, resp: httpx.Response, scopes: list[str]) -> str:
        if resp.status_code != 401:
            return ""
        challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            return "Bearer " + await self._token(bearer, scopes)
        if basic is not None and self.creds is not None:
            value = basic_header(self.creds)
            check = await self.send("GET", "/v2/", "GET /v2/", authorization=value)
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
        with _mapped(self.host, "token request"):
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

    async def _manifest(self, path: str, auth: str) -> httpx.Response:
        headers = {"Accept": MANIFEST_ACCEPT}
        resp = await self.send("HEAD", path, f"HEAD {path}", headers=headers,
                               authorization=auth)
        if resp.status_code == 200 and resp.headers.get("Docker-Content-Digest"):
            return resp
        if resp.status_code in (200, 400, 405, 501):
            # No digest header, or HEAD not supported: fetch the manifest itself.
            resp = await self.send("GET", path, f"GET {path}", headers=headers,
                                   authorization=auth)
        return resp

    async def manifest_digest(self, repo: str, ref: str) -> str:
        """The digest `repo:ref` names (HEAD, else GET and hash the bytes)."""
        path = f"/v2/{repo}/manifests/{ref}"
        auth = await self.authorization([pull_scope(repo)])
        resp = await self._manifest(path, auth)
        if resp.status_code == 401 and not auth:
            # /v2/ was open, this repository is not: answer its own challenge once.
            auth = await self._answer(resp, [pull_scope(repo)])
            resp = await self._manifest(path, auth)
        if resp.status_code != 200:
            raise status_error(resp, f"{resp.request.method} {path}")
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
