"""Salvaged images are pinned, and unpinned by the reaper: real kube-apiserver, three real
containerd nodes with their agents (mTLS), the controller process (restricted RBAC
identity), a real `docker-registry` with htpasswd auth and TLS.

The controller runs with `--reap-interval=1s` (pinning is on by default), so the reaper's
registry checks and its back-off (1 s, 2 s, 4 s, … per record) play out in seconds.

Tried, in order:
- (a) a pod on n1 names an image by digest that only n2 holds and the registry does not
  have: after the salvage every image record of that digest on n1 carries
  `io.cri-containerd.pinned=pinned`, the record says `status.pinned: true` and
  `tote_pinned_images` counts it; reaper cycles ask the registry (HEAD by digest, with the
  pod's pull secret: the registry answers 404, not 401) and keep it pinned, backed off
  (fewer lookups than cycles); then the image is pushed (digest preserved) and the next
  due check unpins: no record of the digest on n1 carries the label, `status.pinned` is
  false, a Normal `ImageUnpinned` event regards the SalvageRecord, the gauge drops. Image
  records tote did not salvage keep their label: another image on n1 pinned by hand, and the
  same digest's record on n2 (not the target) pinned by hand.
- (b) a pinned record past its TTL (completedAt moved back by hand) while n1's agent is
  down: the reaper cannot unpin, logs it and keeps the record; once the agent is back the
  next cycle unpins, then deletes the record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.cluster.controller import ControllerProcess
from tests.cluster.images import Image, layered_image
from tests.cluster.objects import wait_event
from tests.cluster.procs import wait_until
from tests.cluster.registry import Registry
from tests.integration.salvage.auth_registry import (
    PASSWORD,
    USER,
    auth_registry,
    failing_pod,
    grant_pull_secrets,
    pull_secret,
    push,
)
from tests.integration.salvage.conftest import SalvageEnv, records

MiB = 1024 * 1024
PIN = "io.cri-containerd.pinned=pinned"
SECRETS_ROLE = "tote-controller-pinning-test"
GAUGE = "tote_pinned_images"


@pytest.fixture(scope="module")
def registry(senv: SalvageEnv) -> Iterator[tuple[Registry, Path]]:
    with auth_registry(senv, "pin-registry", secrets_role=SECRETS_ROLE,
                       access_log=True) as got:
        yield got


@pytest.fixture(scope="module")
def controller(senv: SalvageEnv, registry: tuple[Registry, Path]) -> ControllerProcess:
    _, ca = registry
    # --registry-resolve: the option whose `secrets get` lets the check use pull secrets
    return senv.controller("pinner", "--reap-interval=1s", "--salvagerecord-ttl=1h",
                           "--registry-resolve", f"--registry-resolve-ca={ca}",
                           "--registry-resolve-timeout=3s")


@pytest.fixture
def ns(senv: SalvageEnv, registry: tuple[Registry, Path], test_namespace: str) -> str:
    """The test namespace with pull secret `regcred`, readable by the controller (the
    chart's `secrets get` rule, granted here by hand)."""
    reg, _ = registry
    grant_pull_secrets(senv, test_namespace, SECRETS_ROLE)
    pull_secret(senv, test_namespace, "regcred", reg.host, USER, PASSWORD)
    return test_namespace


def labels(senv: SalvageEnv, node: str) -> dict[str, tuple[str, set[str]]]:
    """Image record name → (target digest, labels) on `node` (`ctr images ls`: the digest
    is the third column, the labels the last)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for line in senv.ctd.nodes[node].ctr("images", "ls").stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4:
            out[parts[0]] = (parts[2], set(parts[-1].split(",")) - {"-"})
    return out


def pinned(senv: SalvageEnv, node: str, digest: str) -> dict[str, bool]:
    """Every record name of `digest` on `node` → whether it carries the pin label."""
    return {n: PIN in ls for n, (d, ls) in labels(senv, node).items() if d == digest}


def record_of(senv: SalvageEnv, ns: str, digest: str) -> dict[str, object] | None:
    got = [r for r in records(senv.cp, ns) if r["spec"]["digest"] == digest]  # type: ignore[index]
    return got[0] if got else None


def salvage(senv: SalvageEnv, ns: str, pod: str, img: Image) -> dict[str, object]:
    """`img` (preloaded on n2) salvaged to n1 for a standalone pod with pull secret
    regcred; the Completed record."""
    repo = img.name.rsplit(":", 1)[0]
    failing_pod(senv, ns, pod, f"{repo}@{img.digest}", secrets=("regcred",))

    def completed() -> bool:
        rec = record_of(senv, ns, img.digest)
        return rec is not None and rec["status"].get("phase") == "Completed"  # type: ignore[attr-defined]

    wait_until(completed, timeout=60, what=f"{pod}: record Completed")
    rec = record_of(senv, ns, img.digest)
    assert rec is not None
    return rec


def heads(reg: Registry, repo: str, digest: str) -> list[int]:
    return [status for method, path, status in reg.requests()
            if method == "HEAD" and path == f"/v2/{repo}/manifests/{digest}"]


def test_a_pinned_until_the_registry_serves_the_digest_then_unpinned(
    senv: SalvageEnv, registry: tuple[Registry, Path], controller: ControllerProcess, ns: str,
    tmp_path: Path,
) -> None:
    reg, _ = registry
    cp = senv.cp
    img = layered_image(f"{reg.host}/shop/pin:v1", [1 * MiB], seed=61)
    archive = img.write_archive(tmp_path / "pin.tar")
    # Image records tote did not salvage, pinned by someone else: another image on the
    # target, and the same digest on the source node.
    other = layered_image("127.0.0.1:5999/shop/other:v1", [1 * MiB], seed=62)
    senv.preload("n1", other, other.write_archive(tmp_path / "other.tar"))
    senv.ctd.nodes["n1"].ctr("images", "label", other.name, PIN)
    senv.preload("n2", img, archive)
    senv.ctd.nodes["n2"].ctr("images", "label", img.name, PIN)

    g0 = controller.metric(GAUGE)  # records other modules left behind count too

    rec = salvage(senv, ns, "pin", img)
    name = rec["metadata"]["name"]  # type: ignore[index]
    assert rec["status"]["pinned"] is True  # type: ignore[index]
    on_n1 = pinned(senv, "n1", img.digest)
    assert len(on_n1) >= 2 and all(on_n1.values()), on_n1  # repo@digest, config ID, …
    wait_until(lambda: controller.metric(GAUGE) == g0 + 1, timeout=10,
               what="gauge counts it")

    # The registry does not have it: checks come back 404 (with the pull secret: not 401),
    # backed off, and the image stays pinned.
    wait_until(lambda: len(heads(reg, "shop/pin", img.digest)) >= 3, timeout=20,
               what="three registry checks")
    checked = len(heads(reg, "shop/pin", img.digest))
    assert set(heads(reg, "shop/pin", img.digest)) == {404}
    assert all(pinned(senv, "n1", img.digest).values())
    assert record_of(senv, ns, img.digest)["status"]["pinned"] is True  # type: ignore[index]
    assert controller.metric(GAUGE) == g0 + 1
    # Backed off: after three misses the next check is due 4 s later (8 s after four), so
    # none in the next 2.5 s although the reaper cycles every second.
    time.sleep(2.5)
    assert len(heads(reg, "shop/pin", img.digest)) == checked

    push(reg, img, archive)
    t_push = time.monotonic()

    def unpinned() -> bool:
        return record_of(senv, ns, img.digest)["status"].get("pinned") is False  # type: ignore[index,union-attr]

    wait_until(unpinned, timeout=20, what="status.pinned false")
    took = time.monotonic() - t_push
    assert not any(pinned(senv, "n1", img.digest).values()), pinned(senv, "n1", img.digest)
    assert 200 in heads(reg, "shop/pin", img.digest)
    ev = wait_event(cp, ns, name, "ImageUnpinned", timeout=10)  # type: ignore[arg-type]
    assert ev["type"] == "Normal" and ev["regarding"]["kind"] == "SalvageRecord"
    assert "registry serves it again" in ev["note"] and img.digest in ev["note"]
    wait_until(lambda: controller.metric(GAUGE) == g0, timeout=10, what="gauge drops")
    # Untouched: what tote did not salvage, and the source node.
    assert pinned(senv, "n1", other.digest)[other.name] is True
    assert pinned(senv, "n2", img.digest)[img.name] is True
    assert "unpinned" in controller.logs()["controller-pinner"]
    print(f"unpinned {took:.1f}s after the push; {checked} registry checks before it")


def test_b_an_expired_pinned_record_is_unpinned_before_it_is_deleted(
    senv: SalvageEnv, registry: tuple[Registry, Path], controller: ControllerProcess, ns: str,
    tmp_path: Path,
) -> None:
    reg, _ = registry
    cp = senv.cp
    img = layered_image(f"{reg.host}/shop/old:v1", [1 * MiB], seed=63)
    senv.preload("n2", img, img.write_archive(tmp_path / "old.tar"))
    rec = salvage(senv, ns, "old", img)
    name = str(rec["metadata"]["name"])  # type: ignore[index]
    assert rec["status"]["pinned"] is True  # type: ignore[index]
    assert all(pinned(senv, "n1", img.digest).values())

    senv.stop_agent("n1")
    try:
        old = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        cp.kubectl("patch", "salvagerecord", name, "-n", ns, "--subresource=status",
                   "--type=merge", "-p", json.dumps({"status": {"completedAt": old}}))

        def refused() -> bool:
            log = controller.logs()["controller-pinner"]
            return f"could not unpin {img.name.rsplit(':', 1)[0]}@{img.digest}" in log \
                and "keeping the SalvageRecord" in log

        wait_until(refused, timeout=20, what="unpin refused, record kept")
        time.sleep(1.5)  # another cycle: still kept
        assert record_of(senv, ns, img.digest) is not None
    finally:
        senv.restart_agent("n1")

    wait_until(lambda: record_of(senv, ns, img.digest) is None, timeout=30,
               what="record reaped after its unpin")
    assert not any(pinned(senv, "n1", img.digest).values())
    ev = wait_event(cp, ns, name, "ImageUnpinned", timeout=10)
    assert "salvagerecord-ttl" in ev["note"]
