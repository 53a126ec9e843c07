"""The annotation check (pure) and the AdmissionReview v1 route, incl. HTTPS (httpserver)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from tote_core import httpserver
from tote_core.annotations import problems
from tote_core.components import admission
from tote_core.salvage.planner import failure_is_final as _failure_is_final
from tote_core.structs.salvagerecord import Condition


def test_valid_annotations_pass() -> None:
    assert problems({"tote.dev/allow": "true"}, "Namespace") == []
    assert problems({"tote.dev/allow": "false"}, "Namespace") == []
    assert problems({"tote.dev/auto-salvage": "true", "other.io/x": "yes"}, "Pod") == []
    assert problems({}, "Pod") == []


def test_values_other_than_true_false_rejected() -> None:
    for bad in ("yes", "True", "1", "", " true"):
        (msg,) = problems({"tote.dev/allow": bad}, "Namespace")
        assert msg == (f'annotation tote.dev/allow: value "{bad}" is not allowed; '
                       'use "true" or "false"')


def test_misspelt_key_suggests_the_closest() -> None:
    (msg,) = problems({"tote.dev/auto-slavage": "true"}, "Pod")
    assert "unknown tote.dev annotation" in msg
    assert msg.endswith('did you mean "tote.dev/auto-salvage"?')
    (msg,) = problems({"tote.dev/alow": "true"}, "Namespace")
    assert msg.endswith('did you mean "tote.dev/allow"?')
    (msg,) = problems({"tote.dev/zzzzzzzzzzzzzzz": "true"}, "Pod")
    assert "did you mean" not in msg


def test_key_on_the_wrong_kind() -> None:
    (msg,) = problems({"tote.dev/auto-salvage": "true"}, "Namespace")
    assert "belongs on the Pod" in msg
    (msg,) = problems({"tote.dev/allow": "true"}, "Pod")
    assert "belongs on the Namespace" in msg


def test_update_judges_only_changed_keys() -> None:
    old = {"tote.dev/auto-salvage": "yes"}
    assert problems({"tote.dev/auto-salvage": "yes", "x": "1"}, "Pod", old) == []
    assert problems({"tote.dev/auto-salvage": "no"}, "Pod", old)


def _review(kind: str, annotations: dict[str, str], op: str = "CREATE",
            old: dict[str, str] | None = None) -> bytes:
    req: dict[str, object] = {
        "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": kind},
        "operation": op, "name": "web", "namespace": "ns" if kind == "Pod" else "",
        "object": {"metadata": {"name": "web", "annotations": annotations},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}},
    }
    if old is not None:
        req["oldObject"] = {"metadata": {"name": "web", "annotations": old}}
    return msgspec.json.encode({"apiVersion": "admission.k8s.io/v1",
                                "kind": "AdmissionReview", "request": req})


async def test_review_route() -> None:
    status, ctype, body = await admission.review(_review("Pod", {"tote.dev/auto-slavage": "1"}))
    out = msgspec.json.decode(body)
    assert (status, ctype) == (200, "application/json")
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    resp = out["response"]
    assert resp["uid"] == "u-1" and resp["allowed"] is False
    assert resp["status"]["message"].startswith("tote: Pod ns/web: annotation tote.dev/auto-")
    assert 'did you mean "tote.dev/auto-salvage"?' in resp["status"]["message"]
    _, _, body = await admission.review(_review("Namespace", {"tote.dev/allow": "true"}))
    assert msgspec.json.decode(body)["response"] == {"uid": "u-1", "allowed": True}
    _, _, body = await admission.review(
        _review("Pod", {"tote.dev/auto-salvage": "yes"}, "UPDATE",
                {"tote.dev/auto-salvage": "yes"}))
    assert msgspec.json.decode(body)["response"]["allowed"] is True
    assert (await admission.review(b"{not json"))[0] == 400
    assert (await admission.review(b'{"kind": "AdmissionReview"}'))[0] == 400


async def test_served_over_https(tmp_path: Path) -> None:
    """httpserver.serve with an SSL context and a body route: a real HTTPS POST, plus a GET (405)
    and a client that gives up mid-handshake (the server keeps serving)."""
    from tests.unit.test_tlsfiles import _cert, _key, _key_pem, _pem

    key = _key()
    cert = tmp_path / "s.crt"
    cert.write_bytes(_pem(_cert("localhost", key)))
    keyf = tmp_path / "s.key"
    keyf.write_bytes(_key_pem(key))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(keyf))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: httpserver.serve(
            "127.0.0.1:0", {}, body_routes={admission.PATH: admission.review},
            ssl_context=ctx, task_status=task_status))
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        await raw.send_all(b"GET / HTTP/1.1\r\n\r\n")  # plaintext at a TLS port
        await raw.aclose()
        def post() -> httpx.Response:
            with httpx.Client(verify=False) as c:
                return c.post(f"https://127.0.0.1:{port}{admission.PATH}",
                              content=_review("Pod", {"tote.dev/auto-salvage": "yes"}))
        r = await trio.to_thread.run_sync(post)
        assert r.status_code == 200 and r.json()["response"]["allowed"] is False
        def get() -> int:
            with httpx.Client(verify=False) as c:
                return c.get(f"https://127.0.0.1:{port}{admission.PATH}").status_code
        assert await trio.to_thread.run_sync(get) == 405
        nursery.cancel_scope.cancel()


def test_configuration_failures_are_not_final_for_a_new_process() -> None:
    started = dt.datetime.now(dt.UTC)
    before = (started - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    after = (started + dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def cond(reason: str, message: str, when: str) -> list[Condition]:
        return [Condition(type="Failed", status="True", reason=reason, message=message,
                          last_transition_time=when)]

    assert _failure_is_final(cond("Permanent", "too_large: 3GB", before), started)
    # configuration failure recorded by this process: not retried by it
    assert _failure_is_final(cond("ConfigurationError", "no_plugin: x", after), started)
    # ... but by a process started after it
    assert not _failure_is_final(cond("ConfigurationError", "no_plugin: x", before), started)
    # records an older version marked Permanent for a configuration reason
    assert not _failure_is_final(cond("Permanent", "tls_config: mTLS ...", before), started)
    assert not _failure_is_final([], started)


@pytest.mark.parametrize("kind", ["ConfigMap", "Secret"])
def test_other_kinds_are_admitted(kind: str) -> None:
    req = admission.AdmissionRequest(uid="u", kind=admission._GroupVersionKind(kind=kind))
    assert admission.verdict(req) == (True, "")
