"""The fault matrix (issue 12 item 4): one salvage per fault, against real components — the
API server, three containerd daemons with their agents (mTLS), the controller process with
its restricted identity, a real registry and a real webhook receiver.

Every row salvages the same 2-layer image (2 x 96 MiB, held by n2 and n3) to n1 with a fresh
controller, injects its fault while bytes are moving (a `.part` file or containerd ingest
on n1 is growing), and then checks the three things that matter on a bad day:

* nothing lost: the record ends Completed (or in the row's stated outcome) and the image on
  n1 is whole (`ctr images check`);
* nothing half-visible: a watcher polls n1 every 50 ms during the row; whenever the image's
  name is listed, every blob of it must already be in n1's content store;
* no hot loop: few transfers for the salvage, and for 3 s after the outcome no new attempt
  and under a CPU-second of controller time.

The table (fault → outcome, time from the fault to the outcome, transfers started) is printed
at the end of the run. Run alone: `python -m pytest tests/integration/salvage/test_fault_matrix.py`.

Over 400 lines on purpose: the twelve rows share one harness and print one table.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.ci import require
from tests.cluster.containerd_env import Node
from tests.cluster.controller import ControllerProcess
from tests.cluster.fault_table import ROWS, Row
from tests.cluster.images import Image, layered_image
from tests.cluster.objects import create_pod, get, set_waiting, wait_event
from tests.cluster.procs import cpu_seconds, wait_until
from tests.cluster.registry import available, start_registry
from tests.cluster.visibility import Watch
from tests.cluster.webhook import Receiver
from tests.integration.salvage.conftest import SalvageEnv
from tests.integration.salvage.test_salvage import REFUSED, owner_rs
from tote_core.annotations import DELIVERED_AT

MiB = 1024 * 1024
REPO_REF = "127.0.0.1:5999/faults/app"
FAST_LEASE = ["--lease-duration=6s", "--renew-deadline=4s", "--retry-period=1s"]


@pytest.fixture(scope="module")
def image(senv: SalvageEnv, tmp_path_factory: pytest.TempPathFactory) -> Image:
    d = tmp_path_factory.mktemp("faults")
    img = layered_image(f"{REPO_REF}:v1", [96 * MiB, 96 * MiB], seed=91, spool_dir=d)
    archive = img.write_archive(d / "app.tar")
    for node in ("n2", "n3"):
        senv.preload(node, img, archive)
    archive.unlink()
    return img


def _clear_n1(senv: SalvageEnv, img: Image) -> None:
    """n1 holds nothing of the image, no record names it, Node status agrees."""
    n1 = senv.ctd.nodes["n1"]
    names = [n for n in n1.image_names() if img.digest in n or n.startswith(REPO_REF)
             or n in {c.digest for c in img.configs.values()}]
    if names:
        n1.ctr("images", "rm", "--sync", *names)
    n1.ctr("content", "rm", *[b.digest for b in img.blobs], check=False)
    senv.node_status_from_containerd("n1")
    out = senv.cp.kubectl("get", "salvagerecords", "-A", "-o", "json").stdout
    for r in json.loads(out)["items"]:
        if r["spec"]["digest"] == img.digest:
            senv.cp.kubectl("delete", "salvagerecord", r["metadata"]["name"], "-n",
                            r["metadata"]["namespace"], "--ignore-not-found", check=False)


def _record(senv: SalvageEnv, img: Image) -> dict[str, Any] | None:
    out = senv.cp.kubectl("get", "salvagerecords", "-A", "-o", "json", check=False)
    if out.returncode != 0:
        return None  # the API server may be the fault
    for r in json.loads(out.stdout)["items"]:
        if r["spec"]["digest"] == img.digest:
            return r
    return None


def _phase(senv: SalvageEnv, img: Image) -> str:
    r = _record(senv, img)
    return str(r.get("status", {}).get("phase", "")) if r else ""


def _moving(n1: Node) -> bool:
    """Bytes are arriving on n1: a tote `.part` file (fast path) or a containerd ingest
    (API path) has data."""
    for d in (n1.content_root / "tote-tmp", n1.content_root / "ingest"):
        try:
            for p in d.rglob("*"):
                if p.is_file() and p.name != "ref" and p.stat().st_size > 4 * MiB:
                    return True
        except OSError:
            continue
    return False


@dataclass
class Run:
    """One row in progress: the pod, the controller(s), the watcher."""

    senv: SalvageEnv
    img: Image
    ns: str
    ctl: ControllerProcess
    watch: Watch
    fault_at: float = 0.0

    @property
    def ref(self) -> str:
        return f"{REPO_REF}@{self.img.digest}"

    def fail_pod(self, name: str = "app") -> None:
        owner = owner_rs(self.senv, self.ns, f"{name}-rs")
        create_pod(self.senv.cp, self.ns, name, self.ref, node="n1", owner=owner,
                   annotations={"tote.dev/auto-salvage": "true"})
        set_waiting(self.senv.cp, self.ns, name, reason="ErrImagePull", message=REFUSED)

    def wait_moving(self) -> dict[str, Any]:
        n1 = self.senv.ctd.nodes["n1"]
        wait_until(lambda: _moving(n1), timeout=90, interval=0.02,
                   what="bytes arriving on n1")
        self.fault_at = time.monotonic()
        rec = _record(self.senv, self.img)
        assert rec is not None
        return rec

    def wait_completed(self, timeout: float = 150) -> dict[str, Any]:
        wait_until(lambda: _phase(self.senv, self.img) == "Completed", timeout=timeout,
                   what="record Completed")
        rec = _record(self.senv, self.img)
        assert rec is not None
        return rec

    def check_whole(self) -> None:
        n1 = self.senv.ctd.nodes["n1"]
        assert self.ref in n1.image_names()
        check = n1.ctr("images", "check").stdout
        line = next(ln for ln in check.splitlines() if self.ref in ln)
        assert "complete" in line and "incomplete" not in line, line

    def check_quiet(self, ctl: ControllerProcess | None = None) -> int:
        """No hot loop: nothing new started and little CPU for 3 s after the outcome."""
        ctl = ctl or self.ctl
        assert ctl.proc is not None
        attempts = int(ctl.metric("tote_salvage_attempts_total"))
        cpu0 = cpu_seconds(ctl.proc.pid)
        time.sleep(3)
        assert int(ctl.metric("tote_salvage_attempts_total")) == attempts
        spent = cpu_seconds(ctl.proc.pid) - cpu0
        assert spent < 1.0, f"controller used {spent:.2f} CPU-s in 3 s after the outcome"
        return attempts

    def row(self, fault: str, outcome: str, attempts: int, *,
            seconds: float | None = None) -> None:
        self.watch.stop()
        assert not self.watch.half_visible, self.watch.half_visible
        took = time.monotonic() - self.fault_at if seconds is None else seconds
        ROWS.append(Row(fault, outcome, took, attempts))


@pytest.fixture
def run(senv: SalvageEnv, image: Image, test_namespace: str,
        request: pytest.FixtureRequest) -> Iterator[Callable[..., Run]]:
    made: list[Run] = []

    def start(*extra: str, name: str | None = None) -> Run:
        _clear_n1(senv, image)
        ident = name or f"fm-{request.node.name.split('[')[0][5:][:20]}-{len(made)}"
        ctl = senv.controller(ident.replace("_", "-"), *extra)
        r = Run(senv, image, test_namespace, ctl, Watch(
            lambda: senv.ctd.nodes["n1"], image.digest,
            {b.digest for b in image.blobs}).start())
        made.append(r)
        return r

    try:
        yield start
    finally:
        for r in made:
            r.watch.stop()
            r.ctl.stop()
        for node in ("n1", "n2", "n3"):  # every row leaves the agents as it found them
            if not senv.ctd.agents[node].proc.alive() or "--no-fast-path" in \
                    senv.ctd.agents[node].proc.argv:
                senv.restart_agent(node, fast_path=True)


def _fast_path(senv: SalvageEnv, on: bool) -> None:
    for node in ("n1", "n2", "n3"):
        if ("--no-fast-path" in senv.ctd.agents[node].proc.argv) == on:
            senv.restart_agent(node, fast_path=on)


def _path(on: bool) -> str:
    return "fast path" if on else "API path"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "api"])
def test_fm_source_agent_killed(senv: SalvageEnv, run: Callable[..., Run],
                                fast: bool) -> None:
    _fast_path(senv, fast)
    r = run()
    r.fail_pod()
    rec = r.wait_moving()
    first = str(rec["spec"]["sourceNode"])
    senv.stop_agent(first)
    done = r.wait_completed()
    second = done["spec"]["sourceNode"]
    assert second != first
    r.check_whole()
    attempts = r.check_quiet()
    assert attempts == 2
    r.row(f"source agent killed mid-transfer ({_path(fast)})",
          f"Completed from the other holder ({second}); image whole", attempts)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "api"])
def test_fm_target_agent_killed(senv: SalvageEnv, run: Callable[..., Run],
                                fast: bool) -> None:
    _fast_path(senv, fast)
    r = run()
    r.fail_pod()
    r.wait_moving()
    senv.stop_agent("n1")
    wait_until(lambda: _phase(senv, r.img) == "Failed", timeout=60,
               what="the attempt recorded as failed")
    assert senv.ctd.nodes["n1"].image_names().count(r.ref) == 0
    senv.restart_agent("n1", fast_path=fast)
    done = r.wait_completed(timeout=150)  # the first retry comes after the 30 s back-off
    r.check_whole()
    attempts = r.check_quiet()
    retries = int(done["status"]["retryCount"])
    assert 1 <= retries <= 2 and attempts <= 4, (retries, attempts)
    r.row(f"target agent killed mid-transfer ({_path(fast)})",
          f"attempt Failed (will retry), nothing listed on n1; Completed at retry {retries}",
          attempts)


def test_fm_leader_killed(senv: SalvageEnv, run: Callable[..., Run]) -> None:
    r = run(*FAST_LEASE, "--lease-name=fm-ha", name="fm-ha-a")
    standby = senv.controller("fm-ha-b", *FAST_LEASE, lease="fm-ha", wait_lead=False)
    try:
        assert not standby.leading()
        r.fail_pod()
        r.wait_moving()
        r.ctl.kill()
        done = r.wait_completed(timeout=120)
        r.check_whole()
        st: dict[str, Any] = done["status"]
        assert st["bytesTransferred"] == st["bytesTotal"], st
        records = [x for x in json.loads(senv.cp.kubectl(
            "get", "salvagerecords", "-A", "-o", "json").stdout)["items"]
            if x["spec"]["digest"] == r.img.digest]
        assert len(records) == 1
        attempts = r.check_quiet(standby)
        r.row("controller leader killed mid-transfer",
              "standby took the lease and completed it (one record, progress 100 %)",
              attempts + 1)
    finally:
        standby.stop()


def test_fm_apiserver_restarted(senv: SalvageEnv, run: Callable[..., Run]) -> None:
    r = run()
    r.fail_pod()
    r.wait_moving()
    senv.cp.restart_apiserver()
    done = r.wait_completed()
    r.check_whole()
    st: dict[str, Any] = done["status"]
    assert st["bytesTransferred"] == st["bytesTotal"], st
    attempts = r.check_quiet()
    assert attempts <= 2
    r.row("API server restarted mid-transfer", "Completed; record progress 100 %", attempts)


def test_fm_target_containerd_restarted(senv: SalvageEnv, run: Callable[..., Run]) -> None:
    r = run()
    r.fail_pod()
    r.wait_moving()
    senv.restart_containerd("n1")
    done = r.wait_completed(timeout=150)
    r.check_whole()
    attempts = r.check_quiet()
    retries = int(done["status"].get("retryCount", 0))
    assert attempts <= 4 and retries <= 2, (attempts, retries)
    r.row("target containerd SIGKILLed and restarted mid-transfer",
          f"Completed after {retries} retr{'y' if retries == 1 else 'ies'}; image whole",
          attempts)


def test_fm_gc_during_transfer(senv: SalvageEnv, run: Callable[..., Run],
                               tmp_path: Path) -> None:
    n1 = senv.ctd.nodes["n1"]
    dummy = layered_image("docker.io/tote/fm-gc-dummy:v1", [1000], seed=92)
    archive = dummy.write_archive(tmp_path / "dummy.tar")
    stop = threading.Event()
    passes = 0

    def gc_loop() -> None:
        nonlocal passes
        while not stop.is_set():
            n1.ctr("images", "import", "--no-unpack", str(archive), check=False)
            # A synchronous delete is a full GC pass before it returns.
            n1.ctr("images", "rm", "--sync", "docker.io/tote/fm-gc-dummy:v1", check=False)
            passes += 1

    r = run()
    r.fail_pod()
    r.wait_moving()
    gc = threading.Thread(target=gc_loop, daemon=True)
    gc.start()
    try:
        r.wait_completed()
    finally:
        stop.set()
        gc.join(timeout=60)
    n1.ctr("images", "rm", "--sync", "docker.io/tote/fm-gc-dummy:v1", check=False)
    assert passes >= 1
    for blob in r.img.blobs:
        assert n1.blob_present(blob.digest), blob
    r.check_whole()
    attempts = r.check_quiet()
    assert attempts == 1
    r.row("containerd GC during the transfer",
          f"Completed; {passes} GC pass(es) ran, every blob kept", attempts)


def test_fm_tampered_blob(senv: SalvageEnv, run: Callable[..., Run]) -> None:
    """One holder's copy of a layer is altered on disk (same size): the target refuses it
    and the salvage completes from the other holder."""
    r = run()
    layer = max(r.img.layers["linux/amd64"], key=lambda b: b.size)
    r_layer = layer.digest
    bad, good = "n2", "n3"
    path = senv.ctd.nodes[bad].content_root / "blobs" / "sha256" / r_layer.split(":", 1)[1]
    original = path.read_bytes()[-1:]
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(bytes([original[0] ^ 0xFF]))
    try:
        senv.ctd.agents[good].proc.stop()  # the bad copy is tried first …
        r.fail_pod()
        wait_until(lambda: _phase(senv, r.img) == "Failed", timeout=90,
                   what="the tampered copy refused")
        r.fault_at = time.monotonic()
        rec = _record(senv, r.img)
        assert rec is not None and rec["status"]["phase"] == "Failed"
        err = str(rec["status"]["error"])
        assert "digest" in err.lower(), err
        assert r.ref not in senv.ctd.nodes["n1"].image_names()
        senv.restart_agent(good)  # … then the good one is back
        done = r.wait_completed(timeout=150)
        assert done["spec"]["sourceNode"] == good
        r.check_whole()
        attempts = r.check_quiet()
        r.row("tampered blob on the source (one byte flipped, same size)",
              f"the copy from {bad} refused (digest mismatch), nothing listed on n1; "
              f"Completed from {good} at the retry",
              attempts)
    finally:
        with path.open("r+b") as f:
            f.seek(-1, os.SEEK_END)
            f.write(original)


def test_fm_backup_registry_down_during_push(senv: SalvageEnv, run: Callable[..., Run],
                                            tmp_path: Path) -> None:
    require(available(), "docker-registry is needed (.ci/install installs it)")
    reg = start_registry(tmp_path / "reg")
    try:
        r = run(f"--backup-registry={reg.host}/backup", "--backup-registry-insecure")
        r.fail_pod()
        r.wait_completed()
        wait_until(lambda: r.ctl.metric("tote_push_attempts_total") >= 1, timeout=60,
                   interval=0.02, what="push started")
        reg.stop()
        r.fault_at = time.monotonic()
        ev = wait_event(senv.cp, r.ns, "app", "ImagePushFailed", timeout=120)
        assert "not retried" in ev["note"], ev["note"]
        assert _phase(senv, r.img) == "Completed"
        r.check_whole()
        attempts = r.check_quiet()
        assert r.ctl.metric("tote_push_attempts_total") == 1
        r.row("backup registry stopped during the push",
              "ImagePushFailed, one push attempt (no retry storm); the record stays "
              "Completed", attempts)
    finally:
        reg.stop()


def test_fm_webhook_receiver_hung(senv: SalvageEnv, run: Callable[..., Run]) -> None:
    receiver = Receiver(mode="hang").start()
    try:
        r = run(f"--webhook-url={receiver.url}", "--webhook-events=detected,salvaged,failed")
        r.fail_pod()
        r.fault_at = time.monotonic()
        r.wait_completed(timeout=90)
        wait_event(senv.cp, r.ns, "app", "ImageSalvaged", timeout=30)
        took = time.monotonic() - r.fault_at
        r.check_whole()
        attempts = r.check_quiet()
        wait_until(lambda: r.ctl.metric("tote_webhook_failures_total") >= 1, timeout=30,
                   what="the hung delivery counted as failed")
        assert receiver.requests, "the receiver was called"
        r.row("webhook receiver accepts and never answers",
              "salvaged, not held up by the receiver; the delivery timed out and was "
              "counted", attempts, seconds=took)
    finally:
        receiver.stop()


def test_fm_corrupt_image_record(senv: SalvageEnv, run: Callable[..., Run],
                                 tmp_path: Path) -> None:
    """n1 has the image's record but a layer is gone: ImageCorrupt, the record is removed,
    the pod annotated (kubelet syncs it and pulls again), and that pull's failure is
    salvaged — the same pod throughout."""
    r = run()
    n1 = senv.ctd.nodes["n1"]
    small = layered_image(f"{REPO_REF}-small:v1", [1 * MiB, 1 * MiB], seed=93)
    archive = small.write_archive(tmp_path / "small.tar")
    senv.preload("n2", small, archive)
    n1.import_archive(archive)
    layer = small.layers["linux/amd64"][0].digest
    n1.ctr("content", "rm", layer)
    ref = f"{REPO_REF}-small@{small.digest}"
    owner = owner_rs(senv, r.ns, "small-rs")
    create_pod(senv.cp, r.ns, "small", ref, node="n1", owner=owner,
               annotations={"tote.dev/auto-salvage": "true"})
    r.fault_at = time.monotonic()
    set_waiting(senv.cp, r.ns, "small", reason="CreateContainerError", message=(
        "failed to create containerd container: error unpacking image: failed to extract "
        f"layer {layer}: failed to get reader from content store: content digest {layer}: "
        "not found"))
    wait_event(senv.cp, r.ns, "small", "ImageCorrupt", timeout=60)
    wait_until(lambda: not any(small.digest in n for n in n1.image_names()), timeout=30,
               what="the stale record removed on n1")
    wait_until(lambda: DELIVERED_AT in (get(senv.cp, "pod", "small", r.ns)["metadata"]
                                        .get("annotations") or {}),
               timeout=30, what="the pod annotated so kubelet syncs it")
    set_waiting(senv.cp, r.ns, "small", reason="ErrImagePull", message=REFUSED)
    wait_event(senv.cp, r.ns, "small", "ImageSalvaged", timeout=90)
    assert n1.blob_present(layer) and ref in n1.image_names()
    attempts = r.check_quiet()
    assert r.ctl.metric("tote_corrupt_images_total") == 1
    r.row("corrupt image record on the target (a layer's content deleted)",
          "ImageCorrupt, record removed, the pod pulls again and is salvaged", attempts)
