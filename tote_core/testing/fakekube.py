"""A fake Kubernetes API server over plain dicts, served to the real `KubeClient` through an
httpx transport, so the real informers, event recorder and record store run unmodified.

Why a fake server and not a fake client: the code under test is the client's callers —
informers that list, watch from a resourceVersion, relist on 410; the event recorder's
create → 409 → get → patch; the record store's create, status subresource and label
selectors. A fake at the HTTP layer keeps every one of those paths real and leaves only the
storage fake.

What it implements (enough for tote and for plugins, not a conformance suite):

- GET one object, LIST a collection (all namespaces or one) with `labelSelector`
  (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and `fieldSelector`
  (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `=`/`==`/`!=`); one global
  resourceVersion counter, as etcd's.
- WATCH (`?watch=1`): chunked JSON lines, history replayed from the given resourceVersion,
  ADDED/MODIFIED/DELETED per selector (an object leaving a selector is DELETED), `ERROR` 410
  for a resourceVersion older than the last `compact()`, the stream ends after
  `timeoutSeconds` (trio time: MockClock jumps it).
- POST (409 AlreadyExists), PUT (409 on a stale resourceVersion), PATCH as JSON merge patch,
  strategic merge patch (treated as a merge patch: no list-merge keys), server-side apply
  (a merge patch that creates a missing object) and JSON patch (add/remove/replace/test);
  the `status` subresource (writes to it change only `status`; writes to the object leave
  `status` alone for kinds that have the subresource), DELETE with uid / resourceVersion
  preconditions.
- Errors as the API server's `Status` JSON (404 NotFound, 409 Conflict/AlreadyExists, 410,
  400 for an unsupported selector), plus injected faults (`fail`).

Objects go in and come out as dicts; `add`/`update`/`delete` are what a test (or kubelet)
does to the cluster, and go through the same store and watch fan-out as API writes.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import httpx
import trio

if TYPE_CHECKING:
    from tote_core.kube.client import KubeClient
    from tote_core.structs.salvagerecord import SalvageRecord

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API: group/version, plural, scope, status subresource."""

    kind: str
    group_version: str
    plural: str
    namespaced: bool = True
    status_subresource: bool = False


KINDS: tuple[Kind, ...] = (
    Kind("Pod", "v1", "pods", status_subresource=True),
    Kind("Node", "v1", "nodes", namespaced=False, status_subresource=True),
    Kind("Namespace", "v1", "namespaces", namespaced=False, status_subresource=True),
    Kind("ConfigMap", "v1", "configmaps"),
    Kind("Secret", "v1", "secrets"),
    Kind("Service", "v1", "services", status_subresource=True),
    Kind("ServiceAccount", "v1", "serviceaccounts"),
    Kind("Event", "events.k8s.io/v1", "events"),
    Kind("Lease", "coordination.k8s.io/v1", "leases"),
    Kind("SalvageRecord", "tote.dev/v1alpha1", "salvagerecords", status_subresource=True),
    Kind("Deployment", "apps/v1", "deployments", status_subresource=True),
    Kind("ReplicaSet", "apps/v1", "replicasets", status_subresource=True),
    Kind("StatefulSet", "apps/v1", "statefulsets", status_subresource=True),
    Kind("DaemonSet", "apps/v1", "daemonsets", status_subresource=True),
    Kind("Job", "batch/v1", "jobs", status_subresource=True),
    Kind("CronJob", "batch/v1", "cronjobs", status_subresource=True),
    Kind("ValidatingWebhookConfiguration", "admissionregistration.k8s.io/v1",
         "validatingwebhookconfigurations", namespaced=False),
)
_BY_KIND = {k.kind: k for k in KINDS}
_BY_PLURAL = {(k.group_version, k.plural): k for k in KINDS}

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class APIError(Exception):
    """An error answer: HTTP status, Status reason, message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def body(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def kind_of(kind: str) -> Kind:
    """The `Kind` for a kind name; unknown kinds are an error naming the known ones."""
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise ValueError(f"fake cluster: unknown kind {kind!r}; known: "
                         f"{', '.join(sorted(_BY_KIND))} (or register one with "
                         "FakeCluster.add_kind)") from None


@dataclass(frozen=True)
class Request:
    """One request the fake server answered, for assertions (`FakeCluster.requests`)."""

    method: str
    path: str
    params: dict[str, str]
    content_type: str
    body: Any


@dataclass
class Fault:
    """An injected error: the next `times` requests matching method and path fail."""

    status: int
    method: str | None
    path: str | None  # a substring of the request path
    times: int
    message: str


@dataclass(eq=False)
class _Watcher:
    resource: Kind
    namespace: str | None
    labels: Callable[[Obj], bool]
    fields: Callable[[Obj], bool]
    send: trio.MemorySendChannel[bytes]


@dataclass(frozen=True)
class _Change:
    rv: int
    resource: Kind
    old: Obj | None
    new: Obj | None  # None: deleted (old is the last state)


# -- selectors -----------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9._/-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on commas outside parentheses (`a in (x,y),b=c`)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _holds(op: str, value: str | None, wanted: frozenset[str]) -> bool:
    """One selector requirement against the value found (None: absent)."""
    if op in ("=", "==", "in"):
        return value is not None and value in wanted
    if op in ("!=", "notin"):
        return value is None or value not in wanted
    if op == "exists":
        return value is not None
    return value is None  # "!": does not exist


def label_selector(text: str | None) -> Callable[[Obj], bool]:
    """A predicate over an object's labels for a label selector string."""
    reqs: list[tuple[str, str, frozenset[str]]] = []
    for term in _split_selector(text or ""):
        m = _SET_RE.match(term)
        if m is not None:
            neg, key, op, values = m.groups()
            if op:
                reqs.append((key, op, frozenset(v.strip() for v in values.split(",")
                                                if v.strip())))
            else:
                reqs.append((key, "!" if neg else "exists", frozenset()))
            continue
        for op in ("!=", "==", "="):
            if op in term:
                key, value = (x.strip() for x in term.split(op, 1))
                reqs.append((key, op, frozenset({value})))
                break
        else:
            raise APIError(400, "BadRequest", f"unable to parse label selector {text!r}")

    def matches(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(_holds(op, labels.get(key), wanted) for key, op, wanted in reqs)

    return matches


_FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
    "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName", "")),
}


def field_selector(text: str | None) -> Callable[[Obj], bool]:
    """A predicate for a field selector over the fields the fake indexes."""
    reqs: list[tuple[Callable[[Obj], str], str, frozenset[str]]] = []
    for term in _split_selector(text or ""):
        op = "!=" if "!=" in term else "==" if "==" in term else "="
        if op not in term:
            raise APIError(400, "BadRequest", f"invalid field selector {text!r}")
        key, value = (x.strip() for x in term.split(op, 1))
        get = _FIELDS.get(key)
        if get is None:
            raise APIError(400, "BadRequest",
                           f"field label not supported by the fake cluster: {key}")
        reqs.append((get, op, frozenset({value})))

    def matches(obj: Obj) -> bool:
        return all(_holds(op, get(obj), wanted) for get, op, wanted in reqs)

    return matches


# -- patches -------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise APIError(422, "Invalid", f"JSON pointer {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902 JSON patch: add, remove, replace, test (what controllers send)."""
    out = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op.get("path", ""))
        name = op.get("op")
        try:
            parent = _parent(out, parts)
            last = parts[-1] if parts else ""
            if name == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op.get("value"):
                    raise APIError(422, "Invalid", f"test operation failed at {op['path']}")
            elif name == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            elif name in ("add", "replace"):
                value = copy.deepcopy(op.get("value"))
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(value)
                    elif name == "add":
                        parent.insert(int(last), value)
                    else:
                        parent[int(last)] = value
                else:
                    if name == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = value
            else:
                raise APIError(422, "Invalid", f"JSON patch operation {name!r} not supported")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise APIError(422, "Invalid",
                           f"JSON patch {name} {op.get('path')}: {exc!r}") from exc
    return out


# -- the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Path:
    resource: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


class FakeCluster:
    """The store, the watch fan-out and the HTTP handler of the fake API server.

    Use `client()` for a real `KubeClient` over it; `add`, `update`, `modify`, `delete`,
    `get`, `objects` to arrange and inspect state (as kubelet or a user would); `events()` and
    `salvage_records()` for what the code under test wrote; `fail()` to inject errors;
    `requests` for every request served.
    """

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str, str], Obj] = {}  # (kind, namespace, name) → obj
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._uids = itertools.count(1)
        self._history: list[_Change] = []
        self._compacted = 0
        self._watchers: list[_Watcher] = []
        self.faults: list[Fault] = []
        self.requests: list[Request] = []

    # -- kinds --------------------------------------------------------------------------------

    @staticmethod
    def add_kind(kind: Kind) -> None:
        """Teach the fake (process-wide) another kind, e.g. a plugin's custom resource."""
        global _BY_KIND, _BY_PLURAL
        _BY_KIND = {**_BY_KIND, kind.kind: kind}
        _BY_PLURAL = {**_BY_PLURAL, (kind.group_version, kind.plural): kind}

    # -- clients --------------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport answering from this cluster."""
        return _Transport(self)

    def client(self, *, namespace: str = "default") -> KubeClient:
        """A real `KubeClient` (no credentials, no TLS) over this cluster."""
        from tote_core.kube.client import KubeClient
        from tote_core.kube.config import KubeConfig

        config = KubeConfig(server="http://fake-apiserver.invalid", ca_file=None,
                            cert_file=None, key_file=None, token=None, token_file=None,
                            verify=False, namespace=namespace)
        return KubeClient(config, transport=self.transport())

    # -- arranging state (what kubelet, a user or another controller does) -------------------

    def add(self, obj: Obj | Any) -> Obj:
        """Create an object (a dict, or a msgspec struct such as `Pod`) with its status as
        given; fills in uid, resourceVersion and creationTimestamp. Returns the stored copy."""
        body = self._as_dict(obj)
        res = kind_of(body.get("kind", ""))
        meta = body.setdefault("metadata", {})
        if res.namespaced and not meta.get("namespace"):
            meta["namespace"] = "default"
        return self._create(res, body, keep_status=True)

    def update(self, obj: Obj | Any) -> Obj:
        """Replace an object wholesale (status included), as a test rewriting kubelet's view
        of a pod does. Missing → KeyError."""
        body = self._as_dict(obj)
        res = kind_of(body.get("kind", ""))
        meta = body.setdefault("metadata", {})
        if res.namespaced and not meta.get("namespace"):
            meta["namespace"] = "default"
        key = self._key(res, meta.get("namespace"), meta["name"])
        old = self._objects.get(key)
        if old is None:
            raise KeyError(f"fake cluster: no {res.kind} {'/'.join(key[1:]).lstrip('/')}")
        for keep in ("uid", "creationTimestamp"):
            meta.setdefault(keep, old["metadata"].get(keep))
        return self._store(res, key, old, body)

    def modify(self, kind: str, name: str, namespace: str = "", *,
               patch: Obj | None = None, change: Callable[[Obj], None] | None = None) -> Obj:
        """Merge-patch an object (status included) or edit it in place with `change`."""
        res = kind_of(kind)
        key = self._key(res, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise KeyError(f"fake cluster: no {kind} {namespace}/{name}")
        new = copy.deepcopy(old)
        if patch is not None:
            new = merge_patch(new, patch)
        if change is not None:
            change(new)
        return self._store(res, key, old, new)

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        """Remove an object at once (no finalizers, no grace period)."""
        res = kind_of(kind)
        key = self._key(res, namespace, name)
        old = self._objects.pop(key, None)
        if old is None:
            raise KeyError(f"fake cluster: no {kind} {namespace}/{name}")
        self._record(res, old, None)

    def get(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        obj = self._objects.get(self._key(kind_of(kind), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every object of `kind` (in `namespace`, or all), in creation order."""
        out = [o for (k, ns, _), o in self._objects.items()
               if k == kind and (namespace is None or ns == namespace)]
        return copy.deepcopy(sorted(out, key=lambda o: int(o["metadata"]["uid"].split("-")[-1])))

    def events(self, *, reason: str | None = None, regarding: str | None = None,
               namespace: str | None = None) -> list[Obj]:
        """events.k8s.io Events written, filtered by reason and/or the regarded object's
        name (`regarding`)."""
        return [e for e in self.objects("Event", namespace)
                if (reason is None or e.get("reason") == reason)
                and (regarding is None or e.get("regarding", {}).get("name") == regarding)]

    def event_reasons(self, regarding: str | None = None) -> list[str]:
        """The reasons of the Events written (about `regarding`), in order."""
        return [str(e.get("reason")) for e in self.events(regarding=regarding)]

    def salvage_records(self, namespace: str | None = None) -> list[SalvageRecord]:
        """The SalvageRecords in the store, decoded into tote's struct."""
        import msgspec

        from tote_core.structs.salvagerecord import SalvageRecord

        return [msgspec.convert(o, SalvageRecord)
                for o in self.objects("SalvageRecord", namespace)]

    def fail(self, status: int = 500, *, method: str | None = None, path: str | None = None,
             times: int = 1, message: str = "injected by the test") -> Fault:
        """Answer the next `times` requests matching `method` and a `path` substring with
        HTTP `status` (a Status body). Returns the fault; `times` counts down."""
        fault = Fault(status, method.upper() if method else None, path, times, message)
        self.faults.append(fault)
        return fault

    def compact(self) -> None:
        """Forget the watch history: a watch from an older resourceVersion gets 410 Gone
        (as after etcd compaction), so informers relist."""
        self._compacted = self._last_rv
        self._history.clear()

    def close_watches(self) -> None:
        """End every open watch stream (an API server restart, as informers see it)."""
        for w in self._watchers:
            w.send.close()
        self._watchers.clear()

    @property
    def resource_version(self) -> int:
        return self._last_rv

    # -- store ----------------------------------------------------------------------------

    @staticmethod
    def _as_dict(obj: Obj | Any) -> Obj:
        if isinstance(obj, dict):
            return copy.deepcopy(obj)
        import msgspec

        body = msgspec.to_builtins(obj)
        if not isinstance(body, dict):
            raise TypeError(f"fake cluster: cannot store {type(obj).__name__}")
        return body

    @staticmethod
    def _key(res: Kind, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (res.kind, (namespace or "") if res.namespaced else "", name)

    def _next_rv(self) -> int:
        self._last_rv = next(self._rv)
        return self._last_rv

    def _create(self, res: Kind, body: Obj, *, keep_status: bool) -> Obj:
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._uids):05d}"
            else:
                raise APIError(422, "Invalid", f"{res.kind}: metadata.name: Required value")
        key = self._key(res, meta.get("namespace"), meta["name"])
        if not res.namespaced:
            meta.pop("namespace", None)
        if key in self._objects:
            raise APIError(409, "AlreadyExists",
                           f'{res.plural} "{meta["name"]}" already exists')
        body["apiVersion"] = res.group_version
        body["kind"] = res.kind
        meta["uid"] = f"00000000-0000-4000-8000-{next(self._uids):012d}"
        meta.setdefault("creationTimestamp", _now())
        if res.status_subresource and not keep_status:
            body.pop("status", None)
        return self._store(res, key, None, body)

    def _store(self, res: Kind, key: tuple[str, str, str], old: Obj | None, new: Obj) -> Obj:
        new["apiVersion"] = res.group_version
        new["kind"] = res.kind
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        self._objects[key] = new
        self._record(res, old, new)
        return copy.deepcopy(new)

    def _record(self, res: Kind, old: Obj | None, new: Obj | None) -> None:
        rv = self._last_rv if new is not None else self._next_rv()
        if new is None and old is not None:
            old = copy.deepcopy(old)
            old["metadata"]["resourceVersion"] = str(rv)
        change = _Change(rv, res, copy.deepcopy(old) if old else None,
                         copy.deepcopy(new) if new else None)
        self._history.append(change)
        for w in list(self._watchers):
            line = self._event_line(w, change)
            if line is not None:
                try:
                    w.send.send_nowait(line)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    self._watchers.remove(w)

    @staticmethod
    def _event_line(w: _Watcher, change: _Change) -> bytes | None:
        if change.resource != w.resource:
            return None
        obj = change.new if change.new is not None else change.old
        assert obj is not None
        if w.namespace is not None and obj["metadata"].get("namespace") != w.namespace:
            return None

        def matches(o: Obj | None) -> bool:
            return o is not None and w.labels(o) and w.fields(o)

        was, now = matches(change.old), matches(change.new)
        if now:
            type_ = "MODIFIED" if was else "ADDED"
            obj = change.new
        elif was:
            type_ = "DELETED"
            if change.new is not None:  # left the selector: its last state, deleted
                obj = change.new
        else:
            return None
        return json.dumps({"type": type_, "object": obj}).encode() + b"\n"

    # -- the API ---------------------------------------------------------------------------

    def parse_path(self, path: str) -> _Path:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise APIError(404, "NotFound", f"the server could not find the requested "
                           f"resource {path}")
        namespace: str | None = None
        if (len(rest) >= 3 and rest[0] == "namespaces"
                and rest[2] not in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise APIError(404, "NotFound", f"no resource in {path}")
        res = _BY_PLURAL.get((gv, rest[0]))
        if res is None:
            raise APIError(404, "NotFound",
                           f"the server could not find the requested resource ({path})")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return _Path(res, namespace, name, sub)

    def handle(self, method: str, path: str, params: dict[str, str], content_type: str,
               body: Any) -> Obj:
        """Answer one non-watch request with the object, list or Status dict (raises
        APIError for errors)."""
        self.requests.append(Request(method, path, params, content_type, body))
        for fault in self.faults:
            if fault.times > 0 and (fault.method in (None, method)) and (
                    fault.path is None or fault.path in path):
                fault.times -= 1
                raise APIError(fault.status, "InternalError" if fault.status >= 500 else
                               "Injected", fault.message)
        p = self.parse_path(path)
        res = p.resource
        if p.name is None:
            if method == "GET":
                return self._list(p, params)
            if method == "POST":
                if not isinstance(body, dict):
                    raise APIError(400, "BadRequest", "body is not an object")
                body = copy.deepcopy(body)
                meta = body.setdefault("metadata", {})
                if res.namespaced:
                    if not p.namespace:
                        raise APIError(405, "MethodNotAllowed",
                                       f"create {res.plural} needs a namespace")
                    meta["namespace"] = p.namespace
                body["kind"] = res.kind
                return self._create(res, body, keep_status=False)
            raise APIError(405, "MethodNotAllowed", f"{method} on a collection")
        key = self._key(res, p.namespace, p.name)
        current = self._objects.get(key)
        if p.subresource not in (None, "status"):
            raise APIError(404, "NotFound", f"subresource {p.subresource} not served by the "
                           "fake cluster")
        if method == "GET":
            if current is None:
                raise self._not_found(res, p.name)
            return copy.deepcopy(current)
        if method == "DELETE":
            if current is None:
                raise self._not_found(res, p.name)
            pre = (body or {}).get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != current["metadata"].get("uid"):
                raise APIError(409, "Conflict", f"Precondition failed: UID in precondition: "
                               f"{pre['uid']}, UID in object meta: {current['metadata']['uid']}")
            if (pre.get("resourceVersion")
                    and pre["resourceVersion"] != current["metadata"]["resourceVersion"]):
                raise APIError(409, "Conflict", "Precondition failed: resourceVersion")
            del self._objects[key]
            self._record(res, current, None)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if method == "PUT":
            if current is None:
                raise self._not_found(res, p.name)
            if not isinstance(body, dict):
                raise APIError(400, "BadRequest", "body is not an object")
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                raise APIError(409, "Conflict", f'Operation cannot be fulfilled on '
                               f'{res.plural} "{p.name}": the object has been modified; '
                               "please apply your changes to the latest version and try again")
            return self._write(res, key, current, copy.deepcopy(body), p.subresource)
        if method == "PATCH":
            if current is None:
                if content_type.startswith(APPLY_PATCH) and p.subresource is None:
                    created = copy.deepcopy(body)
                    created.setdefault("metadata", {})["name"] = p.name
                    if res.namespaced:
                        created["metadata"]["namespace"] = p.namespace
                    created["kind"] = res.kind
                    return self._create(res, created, keep_status=False)
                raise self._not_found(res, p.name)
            if content_type.startswith(JSON_PATCH):
                if not isinstance(body, list):
                    raise APIError(400, "BadRequest", "a JSON patch is a list of operations")
                new = json_patch(current, body)
            elif content_type.startswith((MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH)):
                if not isinstance(body, dict):
                    raise APIError(400, "BadRequest", "a merge patch is an object")
                new = merge_patch(current, body)
            else:
                raise APIError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - "
                               f"accepted media types include: {MERGE_PATCH}, {JSON_PATCH}, "
                               f"{STRATEGIC_PATCH}, {APPLY_PATCH}")
            return self._write(res, key, current, new, p.subresource)
        raise APIError(405, "MethodNotAllowed", f"{method} not supported")

    def _write(self, res: Kind, key: tuple[str, str, str], current: Obj, new: Obj,
               sub: str | None) -> Obj:
        """Apply an update: the status subresource changes only `status`; the object itself
        keeps its `status` when the kind has the subresource. Identity fields stay."""
        if sub == "status":
            merged = copy.deepcopy(current)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif res.status_subresource:
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        uid = meta.get("uid")
        if uid and uid != current["metadata"].get("uid"):  # as the API server: immutable
            raise APIError(422, "Invalid", f'{res.kind} "{current["metadata"]["name"]}" is '
                           f'invalid: metadata.uid: Invalid value: "{uid}": field is immutable')
        for keep in ("name", "namespace", "uid", "creationTimestamp"):
            if keep in current["metadata"]:
                meta[keep] = current["metadata"][keep]
        if new == current:
            return copy.deepcopy(current)  # a no-op write does not bump resourceVersion
        return self._store(res, key, current, new)

    @staticmethod
    def _not_found(res: Kind, name: str) -> APIError:
        return APIError(404, "NotFound", f'{res.plural} "{name}" not found')

    def _matching(self, p: _Path, params: dict[str, str]) -> list[Obj]:
        labels = label_selector(params.get("labelSelector"))
        fields = field_selector(params.get("fieldSelector"))
        out = [o for (k, ns, _), o in self._objects.items()
               if k == p.resource.kind and (p.namespace is None or ns == p.namespace)
               and labels(o) and fields(o)]
        return sorted(out, key=lambda o: (o["metadata"].get("namespace", ""),
                                          o["metadata"]["name"]))

    def _list(self, p: _Path, params: dict[str, str]) -> Obj:
        items = copy.deepcopy(self._matching(p, params))
        return {"kind": f"{p.resource.kind}List", "apiVersion": p.resource.group_version,
                "metadata": {"resourceVersion": str(self._last_rv)}, "items": items}

    def open_watch(self, path: str, params: dict[str, str]) -> _WatchStream:
        """Start a watch: history after `resourceVersion` first, then live changes."""
        self.requests.append(Request("WATCH", path, params, "", None))
        for fault in self.faults:
            if fault.times > 0 and fault.method in (None, "WATCH", "GET") and (
                    fault.path is None or fault.path in path):
                fault.times -= 1
                raise APIError(fault.status, "InternalError", fault.message)
        p = self.parse_path(path)
        if p.name is not None:
            raise APIError(400, "BadRequest", "watch a collection (use a fieldSelector)")
        send, receive = trio.open_memory_channel[bytes](math.inf)
        w = _Watcher(p.resource, p.namespace, label_selector(params.get("labelSelector")),
                     field_selector(params.get("fieldSelector")), send)
        rv_text = params.get("resourceVersion", "")
        if rv_text in ("", "0"):
            for obj in self._matching(p, params):
                send.send_nowait(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
        else:
            rv = int(rv_text)
            if rv < self._compacted:
                status = APIError(410, "Expired", f"too old resource version: {rv} "
                                  f"({self._compacted})").body()
                send.send_nowait(json.dumps({"type": "ERROR", "object": status}).encode()
                                 + b"\n")
                send.close()
                return _WatchStream(self, w, receive, deadline=math.inf)
            for change in self._history:
                if change.rv > rv:
                    line = self._event_line(w, change)
                    if line is not None:
                        send.send_nowait(line)
        self._watchers.append(w)
        timeout = float(params.get("timeoutSeconds") or 1800)
        return _WatchStream(self, w, receive, deadline=trio.current_time() + timeout)

    def _unwatch(self, w: _Watcher) -> None:
        if w in self._watchers:
            self._watchers.remove(w)
        w.send.close()


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _WatchStream(httpx.AsyncByteStream):
    """The body of a watch response: one JSON line per event until the deadline."""

    def __init__(self, cluster: FakeCluster, watcher: _Watcher,
                 receive: trio.MemoryReceiveChannel[bytes], *, deadline: float) -> None:
        self.cluster = cluster
        self.watcher = watcher
        self.receive = receive
        self.deadline = deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk: bytes | None = None
            with trio.move_on_at(self.deadline):
                try:
                    chunk = await self.receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
            if chunk is None:  # the server's timeoutSeconds: a clean end of the stream
                return
            yield chunk

    async def aclose(self) -> None:
        self.cluster._unwatch(self.watcher)
        await self.receive.aclose()


class _Transport(httpx.AsyncBaseTransport):
    """httpx → FakeCluster: decode the request, answer JSON or a watch stream."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await trio.lowlevel.checkpoint()  # a request is I/O: cancellable, lets others run
        params = dict(parse_qsl(request.url.query.decode(), keep_blank_values=True))
        path = request.url.path
        try:
            if request.method == "GET" and params.get("watch") in ("1", "true"):
                stream = self.cluster.open_watch(path, params)
                return httpx.Response(200, headers={"Content-Type": "application/json"},
                                      stream=stream, request=request)
            raw = await request.aread()
            body = json.loads(raw) if raw else None
            answer = self.cluster.handle(request.method, path, params,
                                         request.headers.get("Content-Type", ""), body)
            return httpx.Response(200 if request.method != "POST" else 201, json=answer,
                                  request=request)
        except APIError as exc:
            return httpx.Response(exc.code, json=exc.body(), request=request)

