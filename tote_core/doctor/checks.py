"""The checks `tote doctor` runs against a live install. Each returns `Check` rows.

A check never raises: whatever goes wrong becomes a `fail` row with the reason, so one
broken part (an agent down, the CRD missing) never hides the others. `warn` rows do not
change the exit status; `fail` rows do.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import trio
from cryptography import x509

from tote_core import __version__, killswitch
from tote_core.errors import KubeError, NotFound
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import NodeHealth
from tote_core.kube import proxy
from tote_core.kube import rbac as rbac_rules
from tote_core.kube.client import KubeClient, resource_path
from tote_core.settings import ControllerSettings
from tote_core.timefmt import parse_time

Status = Literal["ok", "warn", "fail"]
CRD = "salvagerecords.tote.dev"
CERT_WARN_DAYS = 30
AGENT_TIMEOUT = 15.0
# The chart names cluster-scoped objects <namespace>.<fullname>: release tote in tote-system.
DEFAULT_WEBHOOK = "tote-system.tote"


class Check(msgspec.Struct, kw_only=True):
    check: str
    status: Status
    detail: str
    subject: str = ""


@dataclass
class Target:
    """Where the install lives and how to reach its parts (from the doctor's flags)."""

    namespace: str
    service_account: str = "tote-controller"
    lease: str = "tote-controller"
    service: str = "tote-controller"
    health_port: str = "health"
    controller_url: str = ""  # direct http://host:port (else: the service proxy)
    webhook: str = DEFAULT_WEBHOOK
    tls_secret: str = ""
    # No identity given to doctor (no --tls-*, --insecure or --agent-endpoints): the agent
    # rows come from the controller, which reaches the agents itself.
    agents_via_controller: bool = False
    settings: ControllerSettings = field(default_factory=ControllerSettings)


def _ok(check: str, detail: str, subject: str = "") -> Check:
    return Check(check=check, status="ok", detail=detail, subject=subject)


def _fail(check: str, detail: str, subject: str = "") -> Check:
    return Check(check=check, status="fail", detail=detail, subject=subject)


async def crd(kube: KubeClient) -> list[Check]:
    try:
        obj: dict[str, Any] = await kube.get(
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}", dict)
    except NotFound:
        return [_fail("crd", f"CustomResourceDefinition {CRD} is not installed", CRD)]
    except KubeError as exc:
        return [_fail("crd", str(exc), CRD)]
    conds = {c.get("type"): c.get("status") for c in obj.get("status", {}).get("conditions", [])}
    served = [v["name"] for v in obj.get("spec", {}).get("versions", []) if v.get("served")]
    if conds.get("Established") != "True":
        return [_fail("crd", "not Established", CRD)]
    if "v1alpha1" not in served:
        return [_fail("crd", f"v1alpha1 is not served (served: {served})", CRD)]
    return [_ok("crd", f"established, serving {', '.join(served)}", CRD)]


def leader_row(lease: dict[str, Any], t: Target, now: dt.datetime) -> Check:
    """Someone holds the Lease and renewed it within its duration."""
    spec = lease.get("spec", {})
    holder = spec.get("holderIdentity") or ""
    renewed = parse_time(spec.get("renewTime"))
    duration = float(spec.get("leaseDurationSeconds") or 15)
    age = (now - renewed).total_seconds() if renewed else None
    if holder and age is not None and age <= duration:
        return _ok("leader", f"{holder} (renewed {age:.0f}s ago)", t.lease)
    return _fail("leader", f"no current leader (holder {holder or 'none'}, "
                 f"renewed {'never' if age is None else f'{age:.0f}s ago'})", t.lease)


def ready_row(code: int, body: bytes, where: str) -> tuple[Check, str | None]:
    """/readyz's answer → a row and the controller version it reports (if any)."""
    try:
        ready = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        ready = None
    if not isinstance(ready, dict):
        return _fail("ready", f"/readyz HTTP {code}: not JSON: {body[:200]!r}", where), None
    version = ready.get("version")
    version = version if isinstance(version, str) else None
    if code == 200 and ready.get("synced"):
        return _ok("ready", f"/readyz ok ({ready.get('identity', '?')}, "
                   f"leader={ready.get('leader')})", where), version
    return _fail("ready", f"/readyz HTTP {code}: {body[:200]!r}", where), version


def _controller_where(t: Target) -> str:
    return t.controller_url or f"service {t.namespace}/{t.service}:{t.health_port}"


async def _controller_get(kube: KubeClient, t: Target, path: str) -> tuple[int, bytes]:
    """GET `path` on the controller's health port: directly (`--controller-url`) or through
    the API server's service proxy (an error status raises KubeError there)."""
    if t.controller_url:
        import httpx

        async with httpx.AsyncClient(timeout=AGENT_TIMEOUT + 10) as http:
            resp = await http.get(t.controller_url.rstrip("/") + path)
        return resp.status_code, resp.content
    url = proxy.service_proxy_path(t.namespace, t.service, t.health_port, path)
    return 200, await kube.request("GET", url)


async def controller(kube: KubeClient, t: Target) -> tuple[list[Check], str | None]:
    """Lease (someone leads, recently renewed) and /readyz; returns the controller version."""
    out: list[Check] = []
    try:
        lease: dict[str, Any] = await kube.get(
            resource_path("coordination.k8s.io/v1", "leases", t.namespace, t.lease), dict)
        out.append(leader_row(lease, t, dt.datetime.now(dt.UTC)))
    except KubeError as exc:
        out.append(_fail("leader", f"Lease {t.namespace}/{t.lease}: {exc}", t.lease))
    version = None
    where = _controller_where(t)
    try:
        code, body = await _controller_get(kube, t, "/readyz")
        row, version = ready_row(code, body, where)
        out.append(row)
    except (KubeError, OSError) as exc:
        out.append(_fail("ready", f"/readyz: {exc}", where))
    except Exception as exc:  # httpx errors: the controller is unreachable
        out.append(_fail("ready", f"/readyz: {type(exc).__name__}: {exc}", where))
    return out, version


async def rbac(kube: KubeClient, t: Target) -> list[Check]:
    user = f"system:serviceaccount:{t.namespace}:{t.service_account}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{t.namespace}",
              "system:authenticated"]
    denied: list[str] = []
    # what every controller needs and the kill switch; the option rules depend on flags
    # doctor is not given (tote_core/kube/rbac.py)
    needs = [*rbac_rules.RBAC_NEEDS, *rbac_rules.kill_switch(t.settings.config_map)]
    try:
        for group, resource, verb, in_ns, name in needs:
            res, _, sub = resource.partition("/")
            attrs = {"group": group, "resource": res, "verb": verb, "subresource": sub,
                     "namespace": t.namespace if in_ns else "", "name": name}
            review: dict[str, Any] = await kube.create(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                 "spec": {"user": user, "groups": groups, "resourceAttributes": attrs}})
            if not review.get("status", {}).get("allowed"):
                denied.append(f"{verb} {resource}" + (f".{group}" if group else ""))
    except KubeError as exc:
        return [_fail("rbac", f"cannot review access (doctor needs create on "
                      f"subjectaccessreviews): {exc}", user)]
    if denied:
        return [_fail("rbac", "missing: " + ", ".join(denied), user)]
    return [_ok("rbac", f"{len(needs)} permissions granted", user)]


def agent_row(node: str, h: NodeHealth | None, *, snapshot_salvage: bool = True) -> Check:
    """One node's `node_health` answer → its row (None: no plugin answered — none manages
    agents, or the one that does raised, which the host logged and counted). A node that
    discards its layer blobs is a source in snapshot mode, a warning only when
    `--snapshot-salvage=false` makes it no source at all."""
    if h is None:
        return _fail("agent", "no plugin checked this node's agent "
                     "(containerd plugin disabled, or it failed: see the log)", node)
    if not h.reachable:
        return _fail("agent", h.error or "unreachable", node)
    if not h.containerd_ok:
        return _fail("agent", f"containerd unhealthy: {h.error}", node)
    discarded = ("layers discarded after unpack (discard_unpacked_layers=true): a source "
                 "in snapshot mode (layers regenerated from its snapshots)"
                 if snapshot_salvage else "layers DISCARDED after unpack "
                 "(discard_unpacked_layers=true) and --snapshot-salvage=false: cannot be a "
                 "salvage source")
    layers = {None: "no images to sample", True: discarded,
              False: f"layers kept ({h.images_sampled} images sampled)"}
    warn = bool(h.layers_discarded) and not snapshot_salvage
    return Check(check="agent", subject=node, status="warn" if warn else "ok",
                 detail=f"{h.endpoint} mTLS ok; containerd {h.containerd_version}; "
                        + layers[h.layers_discarded])


async def agents_from_controller(kube: KubeClient, t: Target) -> list[Check]:
    """The agent rows as the controller sees them (its `/agents`, components/agent_report.py):
    what doctor shows when it has no identity of its own to reach agents with."""
    where = _controller_where(t)
    try:
        code, body = await _controller_get(kube, t, "/agents")
        if code != 200:
            return [_fail("agent", f"{where} /agents HTTP {code}: {body[:200]!r}")]
        return msgspec.json.decode(body, type=list[Check])
    except (KubeError, OSError, msgspec.DecodeError) as exc:
        return [_fail("agent", f"asking the controller ({where} /agents): {exc}")]
    except Exception as exc:  # httpx errors: the controller is unreachable
        return [_fail("agent", f"asking the controller ({where} /agents): "
                               f"{type(exc).__name__}: {exc}")]


async def agents(kube: KubeClient, host: PluginHost, t: Target) -> list[Check]:
    if t.agents_via_controller:
        return await agents_from_controller(kube, t)
    try:
        nodes = [n["metadata"]["name"] for n in
                 (await kube.get("/api/v1/nodes", dict)).get("items", [])]
    except KubeError as exc:
        return [_fail("agent", f"cannot list nodes: {exc}")]
    if not nodes:
        return [_fail("agent", "the cluster has no nodes")]
    results: dict[str, Check] = {}

    async def one(node: str) -> None:
        with trio.move_on_after(AGENT_TIMEOUT):
            health = await host.node_health(node, t.settings, kube)
            results[node] = agent_row(node, health,
                                      snapshot_salvage=t.settings.snapshot_salvage)
            return
        results[node] = _fail("agent", f"no answer within {AGENT_TIMEOUT:.0f}s", node)

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(one, node)
    return [results[n] for n in sorted(results)]


def cert_rows(label: str, pem: bytes, now: dt.datetime | None = None) -> list[Check]:
    """One row per certificate in `pem`: fail if expired, warn under CERT_WARN_DAYS."""
    rows: list[Check] = []
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        return [_fail("certificate", f"not a PEM certificate: {exc}", label)]
    now = now or dt.datetime.now(dt.UTC)
    for cert in certs:
        left = cert.not_valid_after_utc - now
        name = cert.subject.rfc4514_string() or "?"
        when = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
        if left.total_seconds() <= 0:
            rows.append(_fail("certificate", f"{name} EXPIRED {when}", label))
        elif left.days < CERT_WARN_DAYS:
            rows.append(Check(check="certificate", status="warn", subject=label,
                              detail=f"{name} expires in {left.days}d "
                                     f"{left.seconds // 3600}h ({when})"))
        else:
            rows.append(_ok("certificate", f"{name} valid until {when} ({left.days}d)", label))
    return rows


async def certificates(kube: KubeClient, t: Target) -> list[Check]:
    rows: list[Check] = []
    for label in (t.settings.tls_cert, t.settings.tls_ca):
        if label:
            try:
                rows += cert_rows(label, await trio.Path(label).read_bytes())
            except OSError as exc:
                rows.append(_fail("certificate", str(exc), label))
    if t.tls_secret:
        try:
            secret: dict[str, Any] = await kube.get(
                resource_path("v1", "secrets", t.namespace, t.tls_secret), dict)
            # the chart's generated Secrets hold tls.crt; a tls.existingSecret holds both
            # roles' certificates as controller.crt / agent.crt
            for key in ("tls.crt", "controller.crt", "agent.crt", "ca.crt"):
                data = secret.get("data", {}).get(key)
                if data:
                    rows += cert_rows(f"secret {t.tls_secret}/{key}", base64.b64decode(data))
        except KubeError as exc:
            rows.append(_fail("certificate", str(exc), f"secret {t.tls_secret}"))
    if not rows:
        rows.append(Check(check="certificate", status="warn", detail="no certificate given "
                          "(--tls-cert/--tls-ca or --tls-secret)"))
    return rows


async def webhook(kube: KubeClient, t: Target) -> list[Check]:
    path = ("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
            + t.webhook)
    try:
        cfg: dict[str, Any] = await kube.get(path, dict)
    except NotFound:
        return [_ok("webhook", "not installed (optional)", t.webhook)]
    except KubeError as exc:
        return [_fail("webhook", str(exc), t.webhook)]
    rows: list[Check] = []
    for hook in cfg.get("webhooks", []):
        name, client = hook.get("name", "?"), hook.get("clientConfig", {})
        problems = []
        if hook.get("failurePolicy") != "Ignore":
            problems.append(f"failurePolicy {hook.get('failurePolicy')} (must be Ignore)")
        if not client.get("caBundle"):
            problems.append("no caBundle")
        svc = client.get("service")
        if svc:
            try:
                await kube.get(resource_path("v1", "services", svc["namespace"], svc["name"]),
                               dict)
            except KubeError as exc:
                problems.append(f"service {svc['namespace']}/{svc['name']}: {exc}")
        if problems:
            rows.append(_fail("webhook", "; ".join(problems), name))
        else:
            rows.append(_ok("webhook", "configured", name))
        if client.get("caBundle"):
            rows += cert_rows(f"webhook {name} caBundle", base64.b64decode(client["caBundle"]))
    return rows or [_fail("webhook", "configuration has no webhooks", t.webhook)]


def kill_switch_row(data: dict[str, str] | None, t: Target,
                    controller_enabled: bool | None) -> Check:
    """The kill switch: OK while salvage is on, WARN (with who/when/why) while it is off,
    FAIL when its value is not a boolean (salvage is off by accident). `data` is the
    ConfigMap's (None: absent); `controller_enabled` what /readyz says, for when no runtime
    value is written and the controller's --enabled decides (None: not known)."""
    name = t.settings.config_map
    subject = f"configmap {t.namespace}/{name}"
    default = True if controller_enabled is None else controller_enabled
    sw = killswitch.read(data, default=default, namespace=t.namespace, name=name)
    line = killswitch.describe(sw)
    if sw.source == "invalid":
        return _fail("kill-switch", line, subject)
    if sw.source == "flag" and controller_enabled is None:
        return Check(check="kill-switch", status="warn", subject=subject,
                     detail="no runtime value written; the controller's --enabled decides "
                            "and /readyz did not say what it is")
    if sw.enabled:
        return _ok("kill-switch", line, subject)
    hint = "; `tote enable` turns it back on"
    return Check(check="kill-switch", status="warn", subject=subject, detail=line + hint)


async def kill_switch(kube: KubeClient, t: Target) -> list[Check]:
    name = t.settings.config_map
    data: dict[str, str] | None = None
    try:
        cm: dict[str, Any] = await kube.get(
            resource_path("v1", "configmaps", t.namespace, name), dict)
        data = {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
    except NotFound:
        data = None
    except KubeError as exc:
        return [_fail("kill-switch", f"cannot read the kill switch: {exc}",
                      f"configmap {t.namespace}/{name}")]
    enabled: bool | None = None
    if data is None or killswitch.KEY_ENABLED not in data:
        try:
            _code, body = await _controller_get(kube, t, "/readyz")
            ready = msgspec.json.decode(body) if body else {}
            got = ready.get("enabled") if isinstance(ready, dict) else None
            enabled = got if isinstance(got, bool) else None
        except Exception:  # the ready row already says why the controller is unreachable
            enabled = None
    return [kill_switch_row(data, t, enabled)]


def version_skew(controller_version: str | None) -> list[Check]:
    if controller_version is None:
        return [Check(check="version", status="warn", subject="controller",
                      detail=f"controller version unknown; CLI {__version__}")]
    if controller_version != __version__:
        return [Check(check="version", status="warn", subject="controller",
                      detail=f"controller {controller_version} ≠ CLI {__version__}")]
    return [_ok("version", f"controller and CLI both {__version__} (agents do not report "
                "a version)", "controller")]


async def run_all(kube: KubeClient, host: PluginHost, t: Target) -> list[Check]:
    rows = await crd(kube)
    ctl, version = await controller(kube, t)
    rows += ctl
    rows += await kill_switch(kube, t)
    rows += await rbac(kube, t)
    rows += await agents(kube, host, t)
    rows += await certificates(kube, t)
    rows += await webhook(kube, t)
    rows += version_skew(version)
    return rows
