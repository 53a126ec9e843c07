"""No rendering of the chart produces a pod that would refuse to start.

For every value set of test_helm.py, each container's rendered args go through tote's real
settings loader (`tote_core.settings_loader.parse_args`, exactly what `tote controller` /
`tote agent` call first), with `$(VAR)` expanded as kubelet would and every mounted file
present: certificates of the shape their sources provide (by default the ones the
controller issues, `tote_core.certs`; else cert-manager's or a user's Secret). Then the
start-up checks that refuse to run are applied too
(the agent's mTLS-or-`--insecure` rule and loading the TLS contexts, the controller's agent
TLS context and token signer). Nothing is started.

The identities the controller issues are also used for a real TLS 1.3 handshake: the
agent's server context sees the controller identity, the controller's client context sees an
agent, and a transfer token signed with the controller key verifies against the CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from tote_containerd.agent import tls as agent_tls
from tote_containerd.agent.daemon import _check_tls
from tote_containerd.agent.settings import AgentSettings
from tote_containerd.agent.tokens import Signer, Verifier
from tote_containerd.agents import ControllerTLS
from tote_notify.plugin import WebhookSettings
from tote_registry.backup_plugin import BackupSettings

from tests.cluster.pki import make_pki
from tests.integration.test_helm import VALUE_SETS, Helm, by_kind, helm, pod_spec  # noqa: F401
from tote_core import certs, tlsfiles
from tote_core.components.cert_issuer import webhook_names
from tote_core.hooks import loading
from tote_core.settings import ControllerSettings
from tote_core.settings_loader import parse_args

SIGNING_KEY = b"chart-test-hmac-key"
ENV = {"NODE_NAME": "node-a", "HOST_IP": "127.0.0.2", "POD_NAME": "tote-controller-0",
       "POD_NAMESPACE": "tote-system"}


NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def _issued(docs: list[dict[str, Any]]) -> dict[str, certs.Issued]:
    """What the controller issues for these values (CertIssuer, with tote_core.certs)."""
    ca = certs.new_ca("tote-ca tote-system/tote", NOW)
    out = {"ca": ca, **{r: certs.issue(ca, r, NOW, 90 * DAY) for r in ("controller", "agent")}}
    for vwc in by_kind(docs, "ValidatingWebhookConfiguration"):
        out["webhook"] = certs.issue(ca, "webhook", NOW, 90 * DAY,
                                     webhook_names(vwc, "tote-system"))
    return out


def _secret_files(docs: list[dict[str, Any]], name: str) -> dict[str, bytes] | None:
    for d in by_kind(docs, "Secret"):
        if d["metadata"]["name"] == name:
            return {k: base64.b64decode(v) for k, v in d["data"].items()}
    return None


def _materialise(docs: list[dict[str, Any]], spec: dict[str, Any], role: str,
                 root: Path) -> dict[str, Path]:
    """Create each mounted volume's files under `root`; mountPath → local directory.

    A ConfigMap volume (a CA bundle) gets a PEM file for every name the args use under its
    mount path: the key the user named in the values. A user's Secret that is not TLS
    material (the notifications signing key) gets a key as `kubectl create secret
    --from-file` writes it, trailing newline included."""
    pki = make_pki(root / "pki")
    ident = {"controller": pki.controller, "agent": pki.agent}
    volumes = {v["name"]: v for v in spec["volumes"]}
    out: dict[str, Path] = {}
    for m in spec["containers"][0].get("volumeMounts", []):
        local = root / m["name"]
        local.mkdir(parents=True, exist_ok=True)
        vol = volumes[m["name"]]
        if "secret" in vol:
            rendered = _secret_files(docs, vol["secret"]["secretName"])
            for item in vol["secret"]["items"]:
                if rendered is not None:
                    data = rendered[item["key"]]
                elif not item["path"].endswith((".crt", ".key")):
                    data = SIGNING_KEY + b"\n"
                else:  # cert-manager or a user's Secret: same PEM layout, own identities
                    key = item["key"]
                    src = ident[role] if not key.startswith(("controller", "agent")) \
                        else ident[key.split(".")[0]]
                    data = Path({"crt": src.cert, "key": src.key}[key.rsplit(".", 1)[1]]
                                if key != "ca.crt" else src.ca).read_bytes()
                (local / item["path"]).write_bytes(data)
        elif "emptyDir" in vol and m["mountPath"] == "/etc/tote/tls":
            # issued: the controller writes its own files here before anything starts
            issued = _issued(docs)
            (local / "ca.crt").write_bytes(issued["ca"].cert)
            for name, role in (("tls", "controller"), ("webhook", "webhook")):
                if role in issued:
                    (local / f"{name}.crt").write_bytes(issued[role].cert)
                    (local / f"{name}.key").write_bytes(issued[role].key)
        elif "configMap" in vol:
            prefix = m["mountPath"] + "/"
            names = {a.split(prefix, 1)[1] for a in spec["containers"][0]["args"]
                     if prefix in a}
            assert names, f"ConfigMap volume {m['name']} is mounted but no arg uses it"
            for name in names:
                (local / name).write_bytes(Path(pki.controller.ca).read_bytes())
        out[m["mountPath"]] = local
    return out


def _args(docs: list[dict[str, Any]], kind: str, root: Path) -> tuple[list[str], str]:
    spec = pod_spec(docs, kind)
    (container,) = spec["containers"]
    role = "controller" if kind == "Deployment" else "agent"
    mounts = _materialise(docs, spec, role, root)
    declared = {e["name"] for e in container.get("env", [])}
    args: list[str] = []
    for a in container["args"]:
        for var in re.findall(r"\$\((\w+)\)", a):
            assert var in declared, f"{kind} arg {a} uses ${var} that is not in env"
            a = a.replace(f"$({var})", ENV[var])
        for mount, local in mounts.items():
            a = a.replace(f"={mount}/", f"={local}/")
        args.append(a)
    return args, role


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_args_start(helm: Helm, name: str, tmp_path: Path) -> None:  # noqa: F811
    docs = helm.render(VALUE_SETS[name])
    # Settings come from TOTE_* variables too: kubelet's service links would inject e.g.
    # TOTE_METRICS_PORT=tcp://10.96.x.y:9091 for the release's tote-metrics Service (seen on
    # the e2e cluster: every agent refused to start).
    for kind in ("Deployment", "DaemonSet"):
        assert pod_spec(docs, kind).get("enableServiceLinks") is False, kind
    ctl_args, _ = _args(docs, "Deployment", tmp_path / "controller")
    assert ctl_args[0] == "controller"
    loaded = loading.load(ControllerSettings, ctl_args[1:], "tote controller", environ={})
    ctl: ControllerSettings = loaded.settings
    plugin = loaded.plugin_settings
    tls_on = (VALUE_SETS[name] or {}).get("tls", {}).get("enabled", True)
    assert ctl.insecure is (not tls_on)
    if tls_on:  # what the controller does before its first agent call
        assert ControllerTLS(ctl)() is not None
        Signer(ctl.tls_cert, ctl.tls_key)
    agent_args, _ = _args(docs, "DaemonSet", tmp_path / "agent")
    assert agent_args[0] == "agent"
    agent: AgentSettings = parse_args(AgentSettings, agent_args[1:], "tote agent")
    assert _check_tls(agent) is tls_on  # raises ConfigError when it would refuse
    if tls_on:
        agent_tls.server_context(agent.tls_cert, agent.tls_key, agent.tls_ca)
        agent_tls.client_context(agent.tls_cert, agent.tls_key, agent.tls_ca)
        Verifier(agent.tls_ca)
    assert agent.node_name == "node-a"
    # the socket lies in the mounted containerd-socket volume (materialised under tmp_path)
    assert Path(agent.containerd_socket).parent.name == "containerd-socket"
    assert plugin["agent"].port == agent.grpc_port  # type: ignore[attr-defined]
    values = VALUE_SETS[name] or {}
    assert ctl.status_address.endswith(":8082")
    if values.get("webhook", {}).get("enabled"):
        # what `tote controller` checks before serving: the mounted pair parses and matches
        assert Path(ctl.admission_tls_cert).is_file() and Path(ctl.admission_tls_key).is_file()
        tlsfiles.check_pair(ctl.admission_tls_cert, ctl.admission_tls_key,
                            cert_flag="--admission-tls-cert", key_flag="--admission-tls-key")
    else:
        assert not ctl.admission_address
    backup: BackupSettings = plugin["backup"]  # type: ignore[assignment]
    want_backup = values.get("backup", {})
    assert backup.registry == want_backup.get("registry", "")
    if want_backup.get("caConfigMap"):
        assert Path(backup.registry_ca).is_file()
    webhook: WebhookSettings = plugin["webhook"]  # type: ignore[assignment]
    notif = values.get("notifications", {})
    assert webhook.url == notif.get("webhookUrl", "")
    assert webhook.events == notif.get("events", [])
    assert webhook.format == notif.get("format", "json")
    if notif.get("signingSecret", {}).get("name"):
        # the loader already refused an unreadable file; the plugin reads the key like this
        secret_file = Path(webhook.secret_file)
        assert secret_file.parent.name == "webhook-signing"  # inside the mounted volume
        assert secret_file.read_bytes().strip() == SIGNING_KEY
    else:
        assert not webhook.secret_file


def test_webhook_certificate_verifies_for_the_service(helm: Helm,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """The API server's view: it dials Service tote-webhook.tote-system.svc and checks the
    certificate against the caBundle, which the controller sets to its trust bundle. Done
    here with the certificate issued for the rendered configuration."""
    docs = helm.render({"webhook": {"enabled": True}})
    issued = _issued(docs)
    (tmp_path / "tls.crt").write_bytes(issued["webhook"].cert)
    (tmp_path / "tls.key").write_bytes(issued["webhook"].key)
    ca = issued["ca"].cert
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # as the controller does
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = ssl.create_default_context(cadata=ca.decode())
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve() -> None:
        conn, _ = lsock.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.sendall(b"ok")
        except ssl.SSLError:
            pass  # the wrong-name client below aborts the handshake

    for hostname, ok in (("tote-webhook.tote-system.svc", True),
                         ("tote-webhook.other.svc", False)):
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            if ok:
                with client.wrap_socket(raw, server_hostname=hostname) as conn:
                    assert conn.recv(2) == b"ok"
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    client.wrap_socket(raw, server_hostname=hostname)
        t.join(10)
    lsock.close()


def test_issued_identities_handshake(helm: Helm, tmp_path: Path) -> None:  # noqa: F811
    issued = _issued(helm.render())
    files: dict[str, dict[str, str]] = {}
    for role in ("controller", "agent"):
        files[role] = {}
        for key, data in (("tls.crt", issued[role].cert), ("tls.key", issued[role].key),
                          ("ca.crt", issued["ca"].cert)):
            p = tmp_path / f"{role}-{key}"
            p.write_bytes(data)
            files[role][key] = str(p)
    a, c = files["agent"], files["controller"]
    server = agent_tls.server_context(a["tls.crt"], a["tls.key"], a["ca.crt"])
    client = agent_tls.client_context(c["tls.crt"], c["tls.key"], c["ca.crt"])
    seen: dict[str, Any] = {}
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve() -> None:
        conn, _ = lsock.accept()
        with server.wrap_socket(conn, server_side=True) as tls_conn:
            seen["server_saw"] = agent_tls.identity_of(tls_conn.getpeercert())
            seen["version"] = tls_conn.version()
            tls_conn.sendall(b"ok")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            client.wrap_socket(raw) as conn:
        seen["client_saw"] = agent_tls.identity_of(conn.getpeercert())
        assert conn.recv(2) == b"ok"
    t.join(10)
    lsock.close()
    assert seen["version"] == "TLSv1.3"
    assert seen["server_saw"].role == "controller"
    assert seen["client_saw"].role == "agent"
    token = Signer(c["tls.crt"], c["tls.key"]).mint(
        digest="sha256:" + "a" * 64, source="node-a", target="node-b", ttl=60)
    claims = Verifier(a["ca.crt"]).verify(token, source="node-a", target="node-b")
    assert claims.digest == "sha256:" + "a" * 64
    # An agent key cannot mint transfer tokens the agents accept.
    forged = Signer(a["tls.crt"], a["tls.key"]).mint(
        digest="sha256:" + "a" * 64, source="node-a", target="node-b", ttl=60)
    with pytest.raises(Exception, match="controller identity"):
        Verifier(a["ca.crt"]).verify(forged, source="node-a", target="node-b")
    assert ssl.OPENSSL_VERSION  # the handshake above ran on this OpenSSL


def test_host_network_controller_rolls_without_surge(helm: Helm) -> None:  # noqa: F811
    """In the host network a surge replica can never be scheduled next to the old one (same
    host ports): `helm upgrade --wait` hung on the e2e cluster until maxSurge became 0."""
    docs = helm.render({"controller": {"hostNetwork": True}})
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    docs = helm.render(None)
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert "strategy" not in dep["spec"]  # the default rolling update elsewhere
