"""Certificates the controller issues (`--tls-issue-secrets`) and renews under running
processes: real apiserver (the chart's RBAC for the controller), real containerd, real agents.

The agents start with the test PKI; the test then does what kubelet does with a mounted
Secret — replaces the files atomically with the Secret's content — and checks, without
restarting anything: the agents serve the new chain, a salvage goes through with it, the
controller renews at two thirds of a one-minute lifetime and the next salvage uses the
renewed chain; the old controller certificate is still accepted until it expires (no
flag day) and refused after.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
from pathlib import Path

from cryptography import x509

from tests.cluster.images import layered_image
from tests.cluster.objects import create_pod, get, set_waiting
from tests.cluster.procs import wait_until
from tests.cluster.tlsprobe import der, handshake_with, served_cert
from tests.integration.salvage.conftest import SalvageEnv, records

MiB = 1024 * 1024
REFUSED = "failed to pull: dial tcp 127.0.0.1:5999: connect: connection refused"
PREFIX = "tote"  # the chart's RBAC names Secrets <fullname>-… for release "tote"
ROLES = ("ca", "controller-tls", "agent-tls")


def _secret_name(role: str) -> str:
    return f"{PREFIX}-{role}"


def secret(senv: SalvageEnv, role: str) -> dict[str, bytes]:
    got = get(senv.cp, "secret", _secret_name(role), senv.cp.namespace)
    return {k: base64.b64decode(v) for k, v in got["data"].items()}


def install_like_kubelet(files: tuple[str, str, str], data: dict[str, bytes]) -> None:
    """Replace cert, key and CA each in one rename (kubelet swaps the whole volume)."""
    for path, key in zip(files, ("tls.crt", "tls.key", "ca.crt"), strict=True):
        tmp = f"{path}.new"
        Path(tmp).write_bytes(data[key])
        os.replace(tmp, path)


def _hp(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


def salvage(senv: SalvageEnv, ns: str, tmp_path: Path, name: str, seed: int) -> None:
    img = layered_image(f"127.0.0.1:5999/rot/{name}:v1", [1 * MiB], seed=seed)
    senv.preload("n2", img, img.write_archive(tmp_path / f"{name}.tar"))
    before = len([r for r in records(senv.cp, ns) if r["status"].get("phase") == "Completed"])  # type: ignore[union-attr]
    create_pod(senv.cp, ns, name, f"127.0.0.1:5999/rot/{name}@{img.digest}", node="n1",
               annotations={"tote.dev/auto-salvage": "true"})
    set_waiting(senv.cp, ns, name, reason="ErrImagePull", message=REFUSED)

    def completed() -> bool:
        rs = records(senv.cp, ns)
        return len([r for r in rs if r["status"].get("phase") == "Completed"]) > before  # type: ignore[union-attr]

    wait_until(completed, timeout=90, what=f"salvage of {name} Completed")


def test_issued_certificates_renew_under_running_agents(
    senv: SalvageEnv, test_namespace: str, tmp_path: Path
) -> None:
    cp, ns = senv.cp, test_namespace
    for role in ROLES:
        cp.kubectl("delete", "secret", _secret_name(role), "-n", cp.namespace,
                   "--ignore-not-found", check=False)
    own = tmp_path / "controller-tls"
    own.mkdir()
    ctl = senv.controllers.start(
        "issuer", f"--agent-endpoints={senv.agent_endpoints()}",
        f"--tls-issue-secrets={PREFIX}", "--tls-issue-validity=1m",
        f"--tls-cert={own / 'tls.crt'}", f"--tls-key={own / 'tls.key'}",
        f"--tls-ca={own / 'ca.crt'}", lease="salvage-issuer", wait_lead=True,
    )

    # The Secrets exist, the controller's own files are the controller Secret's.
    issued = secret(senv, "controller-tls")
    assert (own / "tls.crt").read_bytes() == issued["tls.crt"]
    assert secret(senv, "ca")["ca.crt"] == issued["ca.crt"]

    pki = senv.ctd.pki.agent
    agent_files = (str(pki.cert), str(pki.key), str(pki.ca))
    pids = {n: a.proc.pid for n, a in senv.ctd.agents.items()}
    first = secret(senv, "agent-tls")
    install_like_kubelet(agent_files, first)
    for a in senv.ctd.agents.values():
        wait_until(lambda a=a: served_cert(*_hp(a.endpoint)) == der(first["tls.crt"]), timeout=20,
                   what=f"agent {a.node.name} serves the issued certificate")
    salvage(senv, ns, tmp_path, "first", seed=71)

    # Renewal at two thirds of the one-minute lifetime (+ the controller's next look).
    old = {k: own / f"old-{k}" for k in ("tls.crt", "tls.key", "ca.crt")}
    for k, path in old.items():
        path.write_bytes((own / k).read_bytes())
    old_expiry = x509.load_pem_x509_certificate(old["tls.crt"].read_bytes()).not_valid_after_utc
    wait_until(lambda: secret(senv, "agent-tls")["tls.crt"] != first["tls.crt"], timeout=70,
               what="agent certificate renewed")
    wait_until(lambda: (own / "tls.crt").read_bytes() != old["tls.crt"].read_bytes(),
               timeout=30, what="controller files renewed")
    second = secret(senv, "agent-tls")
    assert second["ca.crt"] == first["ca.crt"]  # the CA has ten years: same trust
    install_like_kubelet(agent_files, second)
    for a in senv.ctd.agents.values():
        wait_until(lambda a=a: served_cert(*_hp(a.endpoint)) == der(second["tls.crt"]), timeout=20,
                   what=f"agent {a.node.name} serves the renewed certificate")
    salvage(senv, ns, tmp_path, "second", seed=72)
    assert ctl.proc is not None and ctl.proc.alive()
    assert {n: a.proc.pid for n, a in senv.ctd.agents.items()} == pids  # nobody restarted

    # No flag day: the replaced controller certificate works until it expires, then not.
    data_ep = next(a for a in senv.ctd.agents.values() if a.data_port)
    endpoint = f"127.0.0.1:{data_ep.data_port}"
    if dt.datetime.now(dt.UTC) < old_expiry - dt.timedelta(seconds=3):
        assert handshake_with(*_hp(endpoint), old["tls.crt"], old["tls.key"], old["ca.crt"]) == ""
    time.sleep(max(0.0, (old_expiry - dt.datetime.now(dt.UTC)).total_seconds() + 2))
    refused = handshake_with(*_hp(endpoint), old["tls.crt"], old["tls.key"], old["ca.crt"])
    assert refused, "an expired controller certificate must be refused"
    print(f"expired certificate refused: {refused}")
    assert handshake_with(*_hp(endpoint), own / "tls.crt", own / "tls.key", own / "ca.crt") == ""
