"""The controller's RBAC derived from the requests it makes, not from a list kept by hand.

kube-apiserver writes an audit log of every ServiceAccount request (tests/cluster/
controlplane.py). Each test installs the chart's controller ServiceAccount and rules, as
rendered with some values, into a namespace of its own, runs controllers as that identity
(real containerd nodes and agents, `senv`), and reads back what the identity asked for.

test_2 renders every option that adds rules (the controller issuing the certificates, the
admission webhook's caBundle, registry resolution, the backup registry's Secret), drives a
controller through every path that talks to the API server, restarts it, and checks:

- nothing it asked was refused (a verb the code calls but the chart lacks);
- every request is covered by `tote_core.kube.rbac` (what the chart grants, tested equal in
  tests/integration/test_helm_tls.py, and what `tote doctor` checks);
- every rule there was used by some request (a verb granted that the code never calls),
  except those listed in UNEXERCISED with the reason (none today).

Paths driven: informers (pods, nodes, namespaces, the kill-switch ConfigMap by name, and the
leader's watch of kubelet's core/v1 Events);
leader election (create, renew, release, a second replica taking over); the certificate
issuer (Secrets pre-existing but unusable → update, missing → create, read; the webhook's
caBundle read and set); detection events, and after the restart the same event again (409
→ get → series patch); owner lookups of every kind the inheritance plugin walks; a salvage
of an owned pod (SalvageRecord get/list/create/spec patch/status patch, the pod annotated);
the backup push reading its Secret; a tag resolved with the pod's pull Secret; the reaper
with a short TTL (unpin, status patch, delete).

test_1 runs first (before test_2 gives the agents the issued identity): the default values
and a controller without those options, through a salvage and the reaper's pin check of a
pod with a pull Secret; nothing refused and nothing outside the default rules, so an option's
calls cannot leak into a configuration whose chart does not grant them.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import json
import os
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.cluster.controller import ControllerProcess
from tests.cluster.controlplane import ControlPlane, write_kubeconfig
from tests.cluster.images import layered_image
from tests.cluster.objects import create_pod, force_delete_namespace, get, set_waiting
from tests.cluster.procs import free_port, wait_until
from tests.integration.salvage.auth_registry import failing_pod, pull_secret
from tests.integration.salvage.conftest import SalvageEnv, records
from tests.integration.test_helm import Helm
from tote_core.annotations import DELIVERED_AT
from tote_core.kube import rbac
from tote_core.kube.rbac import Rule
from tote_core.settings import ControllerSettings

MiB = 1024 * 1024
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"
DEAD_REGISTRY = "127.0.0.1:5999"  # nothing listens: resolution and backup push fail fast
PREFIX = "tote"  # the issued Secrets' prefix: the chart's fullname for release "tote"
BACKUP_SECRET = "backup-cred"
CONFIG_MAP = "tote-config"  # the kill switch: the controller's default, the chart's name
TTL = 12  # seconds a SalvageRecord lives after completing

# Rules no test can make the controller use, with the reason. Empty: every rule is used.
UNEXERCISED: dict[Rule, str] = {}


@dataclass
class Release:
    """The chart's controller identity and rules, installed in a namespace of its own."""

    namespace: str
    user: str  # system:serviceaccount:NS:NAME
    webhook: str  # the ValidatingWebhookConfiguration the chart names ("" without)
    cp: ControlPlane  # a view of the control plane whose controller identity is this one
    audit_from: int  # byte offset in the audit log where this identity's requests start

    def requests(self) -> list[Request]:
        return requests_of(self.cp, self.user, self.audit_from)


ALL_OPTIONS: dict[str, Any] = {
    "webhook": {"enabled": True},
    "registryResolve": {"enabled": True},
    "backup": {"registry": f"{DEAD_REGISTRY}/backup", "secretName": BACKUP_SECRET,
               "insecure": True},
}


def _tls_secret(ns: str, name: str) -> dict[str, Any]:
    """A certificate Secret that exists but holds nothing usable: the issuer replaces it."""
    junk = base64.b64encode(b"not a certificate").decode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns},
            "data": {"tls.crt": junk, "tls.key": junk}}


@pytest.fixture(scope="module")
def helm(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(k8s_bin_dir / "helm", tmp_path_factory.mktemp("helm-home"))


@contextlib.contextmanager
def installed(cp: ControlPlane, helm: Helm, values: dict[str, Any]) -> Iterator[Release]:
    """The chart rendered with `values` in a fresh namespace: only the controller's
    ServiceAccount, (Cluster)Role(Binding)s and, with the webhook, a ValidatingWebhook-
    Configuration of the chart's name; a token of that ServiceAccount for the controller."""
    ns = f"tote-rbac-{uuid.uuid4().hex[:6]}"
    docs = helm.render(values, namespace=ns)
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"
                  and d["metadata"]["name"].endswith("-controller")]
    (sa,) = [s["name"] for s in binding["subjects"]]
    webhook = next((d["metadata"]["name"] for d in docs
                    if d["kind"] == "ValidatingWebhookConfiguration"), "")
    ours = [d for d in docs
            if (d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
                and d["metadata"]["name"].endswith("-controller"))
            or (d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa)]
    cp.kubectl("create", "namespace", ns)
    try:
        cp.apply(ours)
        if webhook:
            # The chart's calls its Service; this one a URL (no Service routing on the plain
            # control plane), for configmaps created in this namespace only: never called.
            # The controller keeps its caBundle.
            cp.apply({"apiVersion": "admissionregistration.k8s.io/v1",
                      "kind": "ValidatingWebhookConfiguration", "metadata": {"name": webhook},
                      "webhooks": [{
                          "name": "annotations.tote.dev", "admissionReviewVersions": ["v1"],
                          "sideEffects": "None", "failurePolicy": "Ignore",
                          "timeoutSeconds": 3,
                          "clientConfig": {"url": f"https://127.0.0.1:{free_port()}/validate"},
                          "namespaceSelector": {
                              "matchLabels": {"kubernetes.io/metadata.name": ns}},
                          "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                     "operations": ["CREATE"],
                                     "resources": ["configmaps"]}]}]})
        token = cp.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
        user = f"system:serviceaccount:{ns}:{sa}"
        kubeconfig = write_kubeconfig(cp.workdir / f"{ns}.kubeconfig", server=cp.server,
                                      ca_file=cp.ca_file, user=user, token=token, namespace=ns)
        view = copy.copy(cp)
        view.controller_kubeconfig, view.namespace = kubeconfig, ns
        yield Release(namespace=ns, user=user, webhook=webhook, cp=view,
                      audit_from=cp.audit_log.stat().st_size)
    finally:
        if webhook:
            cp.kubectl("delete", "validatingwebhookconfiguration", webhook,
                       "--ignore-not-found", check=False)
        for d in ours:
            if d["kind"].startswith("Cluster"):
                cp.kubectl("delete", d["kind"].lower(), d["metadata"]["name"],
                           "--ignore-not-found", check=False)
        force_delete_namespace(cp, ns)


# --------------------------------------------------------------------------- the audit log


@dataclass
class Request:
    verb: str
    group: str
    resource: str  # with "/subresource"
    namespace: str
    name: str
    code: int
    decision: str
    uri: str

    def __str__(self) -> str:
        group = f".{self.group}" if self.group else ""
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.verb} {self.resource}{group} {self.name}{where} → {self.code}"


def requests_of(cp: ControlPlane, user: str, offset: int) -> list[Request]:
    """The identity's requests since `offset`, one per audit ID (a watch is logged when it
    starts and again when it ends)."""
    seen: dict[str, Request] = {}
    with cp.audit_log.open("rb") as f:
        f.seek(offset)
        for line in f:
            e = json.loads(line)
            if e["user"].get("username") != user:
                continue
            ref = e.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            seen[e["auditID"]] = Request(
                verb=e["verb"], group=ref.get("apiGroup", ""), resource=resource,
                namespace=ref.get("namespace", ""), name=ref.get("name", ""),
                code=int((e.get("responseStatus") or {}).get("code") or 0),
                decision=(e.get("annotations") or {}).get("authorization.k8s.io/decision", ""),
                uri=e["requestURI"])
    return list(seen.values())


def covers(rule: Rule, req: Request, namespace: str) -> bool:
    """Whether `rule` (as the chart grants it, in `namespace` when in_namespace) authorizes
    `req`, the way RBAC matches: group, resource, verb, namespace, and the name if any."""
    return (rule.group == req.group and rule.resource == req.resource and rule.verb == req.verb
            and (not rule.in_namespace or req.namespace == namespace)
            and (not rule.name or rule.name == req.name))


# --------------------------------------------------------------------------- driving it


def _owned(kind: str, api: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True}


def _template(labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": f"{DEAD_REGISTRY}/x:v1"}]}}


def owners(cp: ControlPlane, ns: str) -> dict[str, dict[str, Any]]:
    """One owner chain per kind the inheritance plugin walks: Deployment (opted in) →
    ReplicaSet; StatefulSet; DaemonSet; CronJob → Job. Nothing reconciles them (no
    kube-controller-manager): they exist to be looked up. Returns each pod's owner ref."""
    sel = {"app": "x"}
    spec = {"selector": {"matchLabels": sel}, "template": _template(sel)}
    auto = {"tote.dev/auto-salvage": "true"}
    made: dict[str, dict[str, Any]] = {}

    def create(obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["namespace"] = ns
        cp.apply(obj)
        return get(cp, f"{obj['kind'].lower()}.{obj['apiVersion'].split('/')[0]}",
                   obj["metadata"]["name"], ns)

    dep = create({"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "web", "annotations": auto}, "spec": spec})
    rs = create({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                 "metadata": {"name": "web-1", "ownerReferences": [
                     _owned("Deployment", "apps/v1", dep)]}, "spec": spec})
    made["web"] = _owned("ReplicaSet", "apps/v1", rs)
    sts = create({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                  "spec": {**spec, "serviceName": "db"}})
    made["db"] = _owned("StatefulSet", "apps/v1", sts)
    ds = create({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds"},
                 "spec": spec})
    made["ds"] = _owned("DaemonSet", "apps/v1", ds)
    job_template = {"spec": {"template": {**_template(sel), "spec": {
        **_template(sel)["spec"], "restartPolicy": "Never"}}}}
    cron = create({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
                   "spec": {"schedule": "0 3 * * *", "jobTemplate": job_template}})
    job = create({"apiVersion": "batch/v1", "kind": "Job",
                  "metadata": {"name": "nightly-1", "ownerReferences": [
                      _owned("CronJob", "batch/v1", cron)]},
                  "spec": {"template": job_template["spec"]["template"]}})
    made["job"] = _owned("Job", "batch/v1", job)
    return made


def install_agent_identity(senv: SalvageEnv, data: dict[str, bytes]) -> None:
    """What kubelet does with the mounted agent Secret: the files replaced, one rename each;
    the agents reload them (tote_core/tlsreload.py). Returns once every agent serves it."""
    pki = senv.ctd.pki.agent
    for path, key in zip((pki.cert, pki.key, pki.ca), ("tls.crt", "tls.key", "ca.crt"),
                         strict=True):
        Path(f"{path}.new").write_bytes(data[key])
        os.replace(f"{path}.new", path)
    want = x509.load_pem_x509_certificate(data["tls.crt"]).public_bytes(Encoding.DER)

    def served(endpoint: str) -> bytes:
        host, port = endpoint.rsplit(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                ctx.wrap_socket(raw) as conn:
            return conn.getpeercert(binary_form=True) or b""

    for node, a in senv.ctd.agents.items():
        wait_until(functools.partial(lambda ep: served(ep) == want, a.endpoint), timeout=20,
                   what=f"agent {node} serves the issued certificate")


def controller(senv: SalvageEnv, rel: Release, identity: str, *options: str
               ) -> ControllerProcess:
    """One replica as the release's identity (a short lease and reap interval, so the test
    takes seconds, not minutes)."""
    return senv.controllers.start(
        identity, f"--agent-endpoints={senv.agent_endpoints()}", "--reap-interval=1s",
        "--lease-duration=6s", "--renew-deadline=4s", "--retry-period=1s", *options,
        cp=rel.cp, lease=ControllerSettings().lease_name, wait_lead=True,
    )


def every_option(rel: Release, workdir: Path) -> list[str]:
    """Every option that adds a rule, as the chart sets them with ALL_OPTIONS."""
    own = workdir / "tls"
    own.mkdir(parents=True, exist_ok=True)
    return [
        f"--tls-issue-secrets={PREFIX}",
        f"--tls-cert={own / 'tls.crt'}", f"--tls-key={own / 'tls.key'}",
        f"--tls-ca={own / 'ca.crt'}",
        f"--admission-address=127.0.0.1:{free_port()}",
        f"--admission-tls-cert={own / 'webhook.crt'}",
        f"--admission-tls-key={own / 'webhook.key'}",
        f"--admission-webhook-name={rel.webhook}",
        "--registry-resolve", "--registry-resolve-timeout=2s",
        f"--backup-registry={DEAD_REGISTRY}/backup", f"--backup-registry-secret={BACKUP_SECRET}",
        "--backup-registry-insecure",
        f"--salvagerecord-ttl={TTL}s",
    ]


def _events(cp: ControlPlane, ns: str) -> list[dict[str, Any]]:
    out = json.loads(cp.kubectl("get", "events.events.k8s.io", "-n", ns, "-o", "json").stdout)
    return out["items"]  # type: ignore[no-any-return]


def _event(cp: ControlPlane, ns: str, regarding: str, reason: str) -> dict[str, Any] | None:
    return next((e for e in _events(cp, ns) if e.get("reason") == reason
                 and e.get("regarding", {}).get("name") == regarding), None)


def _completed(cp: ControlPlane, ns: str) -> bool:
    statuses = [r.get("status") for r in records(cp, ns)]
    return any(isinstance(s, dict) and s.get("phase") == "Completed" for s in statuses)


def refused_or_undeclared(reqs: list[Request], expected: tuple[Rule, ...], ns: str) -> None:
    """Nothing refused, nothing outside the API resources, every request covered."""
    assert reqs, "no request of the controller's identity in the audit log"
    refused = [r for r in reqs if r.code == 403 or r.decision == "forbid"]
    assert not refused, "refused: " + "; ".join(map(str, refused))
    nonresource = [r.uri for r in reqs if not r.resource]
    assert not nonresource, f"requests outside the API resources: {nonresource}"
    undeclared = {str(r) for r in reqs if not any(covers(rule, r, ns) for rule in expected)}
    assert not undeclared, "called but not in tote_core/kube/rbac.py: " + "; ".join(
        sorted(undeclared))


def test_1_without_options_nothing_outside_the_default_rules_is_called(
    senv: SalvageEnv, helm: Helm, test_namespace: str, tmp_path: Path
) -> None:
    """The chart's default rules and a controller without the options that add rules: a
    salvaged image stays pinned and the reaper asks its registry whether it serves it again
    — anonymously, since without --registry-resolve the chart grants no `secrets get`, even
    though the pod names a pull Secret. (The check used to read it and be refused.)"""
    cp, ns = senv.cp, test_namespace
    with installed(cp, helm, {}) as rel:
        pull_secret(senv, ns, "regcred", DEAD_REGISTRY, "u", "p")
        c = senv.ctd.pki.controller
        ctl = controller(senv, rel, "plain",
                         f"--tls-cert={c.cert}", f"--tls-key={c.key}", f"--tls-ca={c.ca}")
        img = layered_image(f"{DEAD_REGISTRY}/rbac/private:v1", [1 * MiB], seed=92)
        senv.preload("n2", img, img.write_archive(tmp_path / "private.tar"))
        failing_pod(senv, ns, "private", f"{DEAD_REGISTRY}/rbac/private@{img.digest}",
                    secrets=("regcred",))
        wait_until(lambda: _completed(cp, ns), timeout=60, what="the salvage Completed")

        def asked() -> bool:
            return any("is not served by its registry" in text for text in ctl.logs().values())

        wait_until(asked, timeout=20, what="the reaper asked the registry about the pin")
        ctl.stop()
        expected = (*rbac.RBAC_NEEDS, *rbac.kill_switch(CONFIG_MAP),
                    *rbac.issuer(PREFIX, webhook=False))
        refused_or_undeclared(rel.requests(), expected, rel.namespace)


def test_2_the_controller_calls_exactly_what_its_rbac_grants(
    senv: SalvageEnv, helm: Helm, test_namespace: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    cp, ns = senv.cp, test_namespace
    with installed(cp, helm, ALL_OPTIONS) as rel:
        expected = (*rbac.RBAC_NEEDS, *rbac.kill_switch(CONFIG_MAP),
                    *rbac.issuer(PREFIX, webhook=True), *rbac.webhook_ca_bundle(rel.webhook),
                    *rbac.REGISTRY_RESOLVE, *rbac.backup_secret(BACKUP_SECRET))
        # The certificate Secrets exist but are unusable: the issuer reads and replaces them.
        for name in rbac.issued_secret_names(PREFIX, webhook=True):
            cp.apply(_tls_secret(rel.namespace, name))
        pull_secret(senv, rel.namespace, BACKUP_SECRET, DEAD_REGISTRY, "u", "p")
        pull_secret(senv, ns, "regcred", DEAD_REGISTRY, "u", "p")

        first = controller(senv, rel, "rbac-1", *every_option(rel, tmp_path))
        # The agents take the issued identity as kubelet would install the Secret.
        install_agent_identity(senv, {k: base64.b64decode(v) for k, v in get(
            cp, "secret", f"{PREFIX}-agent-tls", rel.namespace)["data"].items()})
        hooks = get(cp, "validatingwebhookconfiguration", rel.webhook)["webhooks"]
        assert all(h["clientConfig"].get("caBundle") for h in hooks)

        # An owned pod to salvage, pods of every other owner kind, a tag that only the
        # registry could resolve (asked with the pod's pull Secret).
        refs = owners(cp, ns)
        img = layered_image(f"{DEAD_REGISTRY}/rbac/web:v1", [1 * MiB], seed=91)
        senv.preload("n2", img, img.write_archive(tmp_path / "web.tar"))
        for pod, ref in refs.items():
            image = f"{DEAD_REGISTRY}/rbac/web@{img.digest}" if pod == "web" \
                else f"{DEAD_REGISTRY}/rbac/{pod}:v1"
            create_pod(cp, ns, pod, image, node="n1", owner=ref)
            set_waiting(cp, ns, pod, reason="ErrImagePull", message=REFUSED)
        failing_pod(senv, ns, "tagged", f"{DEAD_REGISTRY}/rbac/tagged:v1",
                    secrets=("regcred",))
        wait_until(lambda: _completed(cp, ns), timeout=60,
                   what="the owned pod's salvage Completed")
        wait_until(lambda: DELIVERED_AT in (get(cp, "pod", "web", ns)["metadata"]
                                            .get("annotations") or {}),
                   timeout=20, what="the salvaged pod annotated (kubelet starts it)")
        wait_until(lambda: _event(cp, ns, "web", "ImagePushFailed") is not None, timeout=30,
                   what="the backup push tried (its Secret read)")
        wait_until(lambda: _event(cp, ns, "tagged", "ImageNotActionable") is not None,
                   timeout=30, what="the tag looked up with the pull Secret")

        # A second replica once the first stopped: the lease taken over, a deleted Secret
        # issued again, the same event again (409 → get → series patch).
        first.stop()
        cp.kubectl("delete", "secret", f"{PREFIX}-controller-tls", "-n", rel.namespace)
        second = controller(senv, rel, "rbac-2", *every_option(rel, tmp_path))

        def series() -> int:
            e = _event(cp, ns, "tagged", "ImageNotActionable") or {}
            return int((e.get("series") or {}).get("count") or 1)

        wait_until(lambda: series() >= 2, timeout=30, what="the event continued as a series")
        wait_until(lambda: records(cp, ns) == [], timeout=TTL + 30,
                   what="the SalvageRecord reaped after its TTL")
        assert any(e.get("reason") == "ImageUnpinned"
                   and e.get("regarding", {}).get("kind") == "SalvageRecord"
                   for e in _events(cp, ns)), "the image unpinned before the record went"
        second.stop()  # its last requests (lease release) are in the log once it exited

        reqs = rel.requests()
        refused_or_undeclared(reqs, expected, rel.namespace)
        used = {rule for rule in expected
                if any(covers(rule, r, rel.namespace) for r in reqs)}
        unused = [str(rule) for rule in expected
                  if rule not in used and rule not in UNEXERCISED]
        assert not unused, "granted but never called: " + "; ".join(unused)
        stale = [str(rule) for rule in UNEXERCISED if rule in used]
        assert not stale, f"listed as unexercised but used: {stale}"
        print(f"{len(reqs)} requests used all {len(used)} rules in "
              f"{time.monotonic() - started:.0f}s")
