"""The validating admission webhook: AdmissionReview v1 in, verdict out.

The API server POSTs an `admission.k8s.io/v1` AdmissionReview for each Pod and Namespace
create/update its ValidatingWebhookConfiguration selects; this module decodes only what the
check needs (kind, operation, the objects' annotations), asks the pure check in
`tote_core.annotations.problems`, and answers allowed or denied with every problem in one
message. Served on every replica (the webhook Service load-balances over all of them), not
only the leader: it reads nothing but the request.
"""

from __future__ import annotations

import logging

import msgspec

from tote_core import httpserver
from tote_core.annotations import problems
from tote_core.structs.kube import PartialObject

log = logging.getLogger("tote.admission")

PATH = "/validate"
API_VERSION = "admission.k8s.io/v1"


class _GroupVersionKind(msgspec.Struct, kw_only=True):
    group: str = ""
    version: str = ""
    kind: str = ""


class AdmissionRequest(msgspec.Struct, rename="camel", kw_only=True):
    uid: str
    kind: _GroupVersionKind = msgspec.field(default_factory=_GroupVersionKind)
    operation: str = ""
    name: str = ""
    namespace: str = ""
    object: PartialObject | None = None
    old_object: PartialObject | None = None


class AdmissionReview(msgspec.Struct, rename="camel", kw_only=True):
    api_version: str = ""
    kind: str = ""
    request: AdmissionRequest | None = None


def verdict(request: AdmissionRequest) -> tuple[bool, str]:
    """(allowed, message) for one request; pure."""
    kind = request.kind.kind
    obj = request.object
    if kind not in ("Pod", "Namespace") or obj is None or request.operation == "DELETE":
        return True, ""
    old = request.old_object.metadata.annotations if request.old_object else None
    found = problems(obj.metadata.annotations, kind, old)
    if not found:
        return True, ""
    name = request.name or obj.metadata.name or "(generated name)"
    where = f"{kind} {request.namespace}/{name}" if request.namespace else f"{kind} {name}"
    return False, f"tote: {where}: " + "; ".join(found)


def _response(uid: str, allowed: bool, message: str) -> bytes:
    response: dict[str, object] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 400, "reason": "BadRequest", "message": message}
    return msgspec.json.encode(
        {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})


async def review(body: bytes) -> httpserver.Response:
    """The `/validate` route: an AdmissionReview v1 request → an AdmissionReview response."""
    try:
        review = msgspec.json.decode(body, type=AdmissionReview)
    except msgspec.DecodeError as exc:
        return 400, "text/plain", f"not an AdmissionReview: {exc}\n".encode()
    if review.request is None:
        return 400, "text/plain", b"AdmissionReview without a request\n"
    allowed, message = verdict(review.request)
    if not allowed:
        log.info("admission denied %s %s: %s", review.request.operation,
                 review.request.kind.kind, message)
    return 200, "application/json", _response(review.request.uid, allowed, message)
