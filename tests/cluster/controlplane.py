"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for tests.

`start_control_plane(workdir, bin_dir)`:

1. makes a CA, an apiserver serving cert (127.0.0.1 / localhost / kubernetes.default…), an
   admin client cert (group `system:masters`) and an RSA service-account signing key;
2. starts etcd and kube-apiserver on free ports (RBAC + Node authorization): etcd on
   127.0.0.1, the apiserver on 127.0.0.1 or on the address it is given (the e2e cluster's
   bridge, tests/cluster/netns.py);
3. writes an admin kubeconfig;
4. renders `deploy/helm/tote` with the built `helm template` and applies its CRD,
   ServiceAccounts, RBAC and kill-switch ConfigMap into `tote-system`;
5. mints a TokenRequest token for `tote-system/tote-controller` and writes
   `controller_kubeconfig`, the restricted identity every controller under test uses.

Every daemon is a `procs.ProcessGroup` member: tracked by PID, logged to a file, stopped by
PID. Nothing here contacts anything outside 127.0.0.1 and the cluster's own bridge.

`start_control_plane` runs those steps in order, each a function named for what it does
(`_issue_certificates`, `_start_etcd`, `_apiserver_argv`, `_install_tote_objects`,
`_write_controller_kubeconfig`, `_report_startup`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import pki, versions
from tests.cluster.procs import Proc, ProcessGroup, free_port, port_open, step_seconds, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "deploy" / "helm" / "tote"
BUILD_SCRIPT = Path(__file__).resolve().parent / "build-binaries.sh"

# Binaries the control plane itself needs; later harnesses check for their own.
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kubectl", "helm")

# Kinds from the rendered chart that the control-plane harness installs (no workloads: the
# controller under test runs as a local process with controller_kubeconfig).
INSTALLED_KINDS = (
    "CustomResourceDefinition",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ConfigMap",
)

CONTROLLER_SA = "tote-controller"
AUDIT_LOG = "audit.log"  # in the workdir: kube-apiserver's audit log (ServiceAccount requests)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


# --------------------------------------------------------------------------- binaries


def _default_cache_dir() -> Path:
    """The versioned cache dir build-binaries.sh writes for the pinned versions."""
    return versions.k8s_cache_dir()


def _complete(d: Path, names: tuple[str, ...]) -> bool:
    return all(os.access(d / n, os.X_OK) for n in names)


def binaries_dir(*, build: bool | None = None) -> Path | None:
    """Where the Kubernetes/etcd/helm binaries are, or None if they are not built.

    `TOTE_BIN_DIR` overrides the location. Otherwise the versioned cache dir of
    tests/cluster/build-binaries.sh is used. With `build=True` (or env
    `TOTE_BUILD_BINARIES=1`) the script is run first (minutes on a fresh machine, instant
    when cached).
    """
    override = os.environ.get("TOTE_BIN_DIR")
    if override:
        d = Path(override)
        return d if _complete(d, REQUIRED_BINARIES) else None
    if build is None:
        build = os.environ.get("TOTE_BUILD_BINARIES") == "1"
    if build:
        res = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True
        )
        d = Path(res.stdout.strip().splitlines()[-1])
    else:
        d = _default_cache_dir()
    return d if _complete(d, REQUIRED_BINARIES) else None


# --------------------------------------------------------------------------- kubeconfig


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: str,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    user_entry: dict[str, Any] = {}
    if client_cert is not None and client_key is not None:
        user_entry["client-certificate"] = str(client_cert)
        user_entry["client-key"] = str(client_key)
    if token is not None:
        user_entry["token"] = token
    context: dict[str, Any] = {"cluster": "tote-test", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tote-test",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- the control plane


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call; its message carries kubectl's stderr."""

    def __str__(self) -> str:
        args = " ".join(str(a) for a in self.cmd[3:])
        return f"kubectl {args} exited {self.returncode}: {str(self.stderr).strip()}"


@dataclass
class ControlPlane:
    bin_dir: Path
    workdir: Path
    server: str  # https://ADDRESS:PORT (127.0.0.1, or the e2e cluster's bridge address)
    ca_file: Path
    admin_kubeconfig: Path
    controller_kubeconfig: Path
    namespace: str = "tote-system"
    # Internals (not part of the tests' API).
    procs: ProcessGroup | None = field(default=None, repr=False)
    apiserver_argv: list[str] = field(default_factory=list, repr=False)
    admin_cert: pki.CertPair | None = field(default=None, repr=False)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    _apiserver: Proc | None = field(default=None, repr=False)

    # -- kubectl ------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (admin identity unless `kubeconfig` is given), text mode."""
        argv = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            "--request-timeout=30s",
            *args,
        ]
        res = subprocess.run(argv, input=input, capture_output=True, text=True)
        if check and res.returncode != 0:
            raise KubectlError(res.returncode, argv, output=res.stdout, stderr=res.stderr)
        return res

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]] | str) -> None:
        """`kubectl apply -f -` as admin (dicts are serialised; lists become a v1 List)."""
        if isinstance(manifest, str):
            text = manifest
        elif isinstance(manifest, list):
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifest})
        else:
            text = json.dumps(manifest)
        res = self.kubectl("apply", "-f", "-", input=text, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"kubectl apply failed: {res.stderr.strip()}\n{text[:2000]}")

    # -- apiserver lifecycle ------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if self.admin_cert is not None:
            ctx.load_cert_chain(str(self.admin_cert.cert), str(self.admin_cert.key))
        return ctx

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.server}/readyz", context=self._ssl_context(), timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def start_apiserver(self, timeout: float = 90.0) -> None:
        """Start kube-apiserver with the recorded flags (same port) and wait for /readyz."""
        if self._apiserver is not None and self._apiserver.alive():
            return
        assert self.procs is not None
        if self._apiserver is not None and self._apiserver in self.procs.procs:
            self.procs.procs.remove(self._apiserver)
        host, port = self.server.removeprefix("https://").rsplit(":", 1)
        # The old listener may linger for a moment after exit.
        wait_until(lambda: not port_open(host, int(port)), timeout=15, what="port free")
        self._apiserver = self.procs.start("kube-apiserver", self.apiserver_argv)
        wait_until(
            self.healthy, timeout=timeout, what="kube-apiserver /readyz", proc=self._apiserver
        )

    def stop_apiserver(self) -> None:
        """SIGTERM the apiserver (SIGKILL after a grace period) and wait for it to exit."""
        if self._apiserver is not None:
            self._apiserver.stop(grace=20)

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    # -- diagnostics / teardown -----------------------------------------------------

    def logs(self) -> dict[str, str]:
        return self.procs.logs() if self.procs is not None else {}

    @property
    def audit_log(self) -> Path:
        """kube-apiserver's audit log (JSON lines): every ServiceAccount request, metadata."""
        return self.workdir / AUDIT_LOG

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.stop_all()


def _audit_policy(workdir: Path) -> Path:
    """Log every ServiceAccount's requests at level Metadata once answered (no bodies;
    omitStages RequestReceived halves the entries), nothing else."""
    path = workdir / "audit-policy.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                  {"level": "None"}],
    }))
    return path


def _render_chart(bin_dir: Path, namespace: str) -> list[dict[str, Any]]:
    res = subprocess.run(
        [
            str(bin_dir / "helm"),
            "template",
            "tote",
            str(CHART_DIR),
            "--namespace",
            namespace,
            "--include-crds",
            # the chart's kubeVersion is >=1.34; without a cluster helm assumes v1.20
            "--kube-version",
            versions.pin("K8S_VERSION"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/tote-helm-cache"},
    )
    if res.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{res.stderr}")
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@dataclass(frozen=True)
class _ControlPlaneCerts:
    """What the control plane's PKI step issues: the cluster CA, the apiserver's serving
    pair, the admin's client pair and the ServiceAccount token signing key."""

    ca: pki.CA
    serving: pki.CertPair
    admin: pki.CertPair
    sa: pki.CertPair


def _issue_certificates(pki_dir: Path, address: str, service_ip: str) -> _ControlPlaneCerts:
    """A fresh cluster CA; the apiserver's serving certificate names every way a client
    reaches it (loopback, `address`, the `kubernetes` Service's IP and DNS names)."""
    ca = pki.make_ca(pki_dir)
    serving = ca.issue(
        "apiserver",
        common_name="kube-apiserver",
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=tuple(dict.fromkeys(("127.0.0.1", address, service_ip))),
        server=True,
    )
    admin = ca.issue(
        "admin", common_name="tote-admin", organizations=("system:masters",), client=True
    )
    return _ControlPlaneCerts(ca=ca, serving=serving, admin=admin,
                              sa=pki.make_rsa_keypair(pki_dir, "sa"))


def _start_etcd(procs: ProcessGroup, workdir: Path, bin_dir: Path) -> str:
    """A single-member etcd on free loopback ports, waited for; its client URL."""
    etcd_client, etcd_peer = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    etcd = procs.start(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=tote-test",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=tote-test={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # throw-away data: don't pay for fsync
            "--log-level=warn",
        ],
    )

    def etcd_healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (OSError, ValueError):
            return False

    wait_until(etcd_healthy, timeout=30, what="etcd /health", proc=etcd)
    return etcd_url


def _apiserver_argv(
    workdir: Path, bin_dir: Path, certs: _ControlPlaneCerts, *, etcd_url: str, address: str,
    port: int, service_range: str, service_account_admission: bool,
    extra_apiserver_args: tuple[str, ...],
) -> list[str]:
    """kube-apiserver's command line (kept on the ControlPlane so a test can restart it)."""
    loopback = address.startswith("127.")
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={address}",
        f"--advertise-address={address}",
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={certs.serving.cert}",
        f"--tls-private-key-file={certs.serving.key}",
        f"--client-ca-file={certs.ca.cert}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={certs.sa.cert}",
        f"--service-account-signing-key-file={certs.sa.key}",
        f"--service-cluster-ip-range={service_range}",
        # Without kube-controller-manager nobody creates the `default` ServiceAccount,
        # so ServiceAccount admission would reject every Pod.
        *(() if service_account_admission else ("--disable-admission-plugins=ServiceAccount",)),
        # The `kubernetes` Service endpoints would point at 127.0.0.1 (invalid): skip.
        *(("--endpoint-reconciler-type=none",) if loopback
          # kubelets by address: a node's name would be looked up in the host's DNS
          else ("--enable-aggregator-routing=true",
                "--kubelet-preferred-address-types=InternalIP")),
        "--allow-privileged=true",
        "--profiling=false",
        "--event-ttl=1h",
        # Audit log of ServiceAccount requests only, metadata level (who, verb, object,
        # response code): tests/integration/salvage/test_rbac_calls.py derives the
        # controller's RBAC from it. Admin and node traffic is not logged.
        f"--audit-policy-file={_audit_policy(workdir)}",
        f"--audit-log-path={workdir / AUDIT_LOG}",
        *extra_apiserver_args,
    ]


def _install_tote_objects(cp: ControlPlane) -> None:
    """tote's namespace, CRDs (waited until Established) and RBAC, rendered from the chart;
    not the `helm test` hook's objects (they exist only while `helm test` runs)."""
    docs = _render_chart(cp.bin_dir, cp.namespace)
    kinds = {d.get("kind") for d in docs}
    for want in ("CustomResourceDefinition", "ClusterRole", "Role", "ServiceAccount"):
        if want not in kinds:
            raise RuntimeError(f"chart rendered no {want}; got {sorted(map(str, kinds))}")
    cp.kubectl("create", "namespace", cp.namespace)
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    cp.apply(crds)
    cp.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *[f"crd/{d['metadata']['name']}" for d in crds],
    )
    cp.apply([d for d in docs if d["kind"] in INSTALLED_KINDS and d not in crds
              and "helm.sh/hook" not in d["metadata"].get("annotations", {})])


def _write_controller_kubeconfig(cp: ControlPlane) -> None:
    """The controller's restricted identity: its ServiceAccount's token in a kubeconfig."""
    token = cp.kubectl(
        "create", "token", CONTROLLER_SA, "-n", cp.namespace, "--duration=24h"
    ).stdout.strip()
    write_kubeconfig(
        cp.controller_kubeconfig,
        server=cp.server,
        ca_file=cp.ca_file,
        user=f"system:serviceaccount:{cp.namespace}:{CONTROLLER_SA}",
        token=token,
        namespace=cp.namespace,
    )


def _report_startup(cp: ControlPlane, marks: list[float]) -> None:
    """Keep and print how long each step took (start, pki, etcd, apiserver, end)."""
    cp.startup_seconds = step_seconds(("pki", "etcd", "kube-apiserver", "chart+token"), marks)
    print(
        "control plane up in {total}s (pki {pki}s, etcd {etcd}s, kube-apiserver "
        "{kube-apiserver}s, CRD/RBAC/token {chart+token}s) at ".format(**cp.startup_seconds)
        + cp.server,
        file=sys.stderr,
    )


def start_control_plane(
    workdir: Path,
    bin_dir: Path,
    *,
    namespace: str = "tote-system",
    extra_apiserver_args: tuple[str, ...] = (),
    service_account_admission: bool = False,
    address: str = "127.0.0.1",
    service_range: str = "10.96.0.0/16",
) -> ControlPlane:
    """Bring up etcd + kube-apiserver + tote's CRD/RBAC; see the module docstring.

    `service_account_admission=True` is for clusters with a kube-controller-manager (which
    creates each namespace's `default` ServiceAccount): pods then get their token volume as in
    any real cluster, which tote's own pods (installed by helm) need.

    `address`: where kube-apiserver listens and what it advertises. On loopback (the
    default) the `kubernetes` Service gets no endpoints (the apiserver refuses loopback
    ones); on the e2e cluster's bridge address it gets real ones that kube-proxy serves,
    and the apiserver reaches webhooks and the service proxy's targets at their endpoints
    (pod IPs, routed from the host), as a control plane without kube-proxy of its own does."""
    marks = [time.monotonic()]
    workdir.mkdir(parents=True, exist_ok=True)
    missing = [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise FileNotFoundError(f"missing binaries in {bin_dir}: {missing}")
    service_ip = str(next(ipaddress.ip_network(service_range).hosts()))
    certs = _issue_certificates(workdir / "pki", address, service_ip)
    marks.append(time.monotonic())

    procs = ProcessGroup(log_dir=workdir / "logs")
    try:
        etcd_url = _start_etcd(procs, workdir, bin_dir)
        marks.append(time.monotonic())
        # On a cluster's own bridge address, the port real clusters use (NetworkPolicies
        # see the port behind the `kubernetes` Service, and tote's chart allows the usual
        # ones); on loopback, a free one.
        port = free_port(address) if address.startswith("127.") else 6443
        server = f"https://{address}:{port}"
        cp = ControlPlane(
            bin_dir=bin_dir,
            workdir=workdir,
            server=server,
            ca_file=certs.ca.cert,
            admin_kubeconfig=workdir / "admin.kubeconfig",
            controller_kubeconfig=workdir / "controller.kubeconfig",
            namespace=namespace,
            procs=procs,
            apiserver_argv=_apiserver_argv(
                workdir, bin_dir, certs, etcd_url=etcd_url, address=address, port=port,
                service_range=service_range,
                service_account_admission=service_account_admission,
                extra_apiserver_args=extra_apiserver_args),
            admin_cert=certs.admin,
        )
        cp.start_apiserver()
        marks.append(time.monotonic())
        write_kubeconfig(cp.admin_kubeconfig, server=server, ca_file=certs.ca.cert,
                         user="tote-admin", client_cert=certs.admin.cert,
                         client_key=certs.admin.key)
        _install_tote_objects(cp)
        _write_controller_kubeconfig(cp)
        marks.append(time.monotonic())
        _report_startup(cp, marks)
        return cp
    except BaseException as exc:
        tails = "\n".join(f"--- {k} ---\n{v[-4000:]}" for k, v in procs.logs().items())
        procs.stop_all()
        if isinstance(exc, Exception):
            raise RuntimeError(f"control plane failed to start: {exc}\n{tails}") from exc
        raise


def _main() -> None:
    """`python -m tests.cluster.controlplane [WORKDIR]`: start, print kubeconfigs, wait."""
    bin_dir = binaries_dir(build=True)
    if bin_dir is None:
        raise SystemExit("binaries not built: run tests/cluster/build-binaries.sh")
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/tote-controlplane")
    if workdir.exists():
        shutil.rmtree(workdir)
    cp = start_control_plane(workdir, bin_dir)
    print(f"admin:      export KUBECONFIG={cp.admin_kubeconfig}")
    print(f"controller: {cp.controller_kubeconfig}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()


if __name__ == "__main__":
    _main()
