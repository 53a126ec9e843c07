"""Credential refresh timing (pure logic; the real exec plugin path is tested against the
API server in tests/integration/test_exec_credentials.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json

from tote_core.kube.credentials import Credentials, jwt_expiry

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_refreshes_within_a_tenth_of_the_lifetime_before_expiry() -> None:
    now = [T0]
    calls: list[int] = []

    def reload() -> tuple[str, dt.datetime]:
        calls.append(1)
        return f"tok-{len(calls)}", now[0] + dt.timedelta(seconds=10)

    creds = Credentials("tok-0", expiry=T0 + dt.timedelta(seconds=10), reload=reload,
                        clock=lambda: now[0])
    now[0] = T0 + dt.timedelta(seconds=8.9)
    assert not creds.due()
    now[0] = T0 + dt.timedelta(seconds=9.1)  # within 1 s (10 % of 10 s) of expiry
    assert creds.due()
    creds.refresh()
    assert creds.current() == "tok-1" and not creds.due()


def test_a_refused_token_is_refreshed_once_only_when_refreshable() -> None:
    assert not Credentials("static").invalidate()
    creds = Credentials("a", reload=lambda: ("b", None))
    assert not creds.due() and creds.invalidate() and creds.due()
    creds.refresh()
    assert creds.current() == "b" and not creds.due()


def test_jwt_expiry_is_read_from_oidc_style_tokens() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1893456000}).encode()).rstrip(b"=")
    assert jwt_expiry(f"x.{payload.decode()}.y") == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert jwt_expiry("not-a-jwt") is None and jwt_expiry("a.%%%.b") is None
