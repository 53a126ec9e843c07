"""Salvage limits and failures (issue 4): size guard (4), source down → next candidate and
back-off until a source returns (5), leader killed mid-transfer (6). Real apiserver, real
containerd instances, real agents."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.images import layered_image
from tests.cluster.objects import create_pod, set_waiting, wait_event
from tests.cluster.procs import wait_until
from tests.integration.salvage.conftest import SalvageEnv, records
from tests.integration.salvage.test_salvage import REFUSED, owner_rs, wait_record

MiB = 1024 * 1024
FAST_LEASE = ["--lease-duration=6s", "--renew-deadline=4s", "--retry-period=1s"]


def fail_pod(senv: SalvageEnv, ns: str, name: str, ref: str, node: str = "n1") -> None:
    create_pod(senv.cp, ns, name, ref, node=node, annotations={"tote.dev/auto-salvage": "true"})
    set_waiting(senv.cp, ns, name, reason="ErrImagePull", message=REFUSED)


def test_4_size_guard_is_a_permanent_failure(
    senv: SalvageEnv, test_namespace: str, tmp_path: Path
) -> None:
    ns = test_namespace
    ctl = senv.controller("sizeguard", "--max-image-size=1MB")
    try:
        img = layered_image("127.0.0.1:5999/big/one:v1", [2 * MiB, 1 * MiB], seed=21)
        senv.preload("n2", img, img.write_archive(tmp_path / "big.tar"))
        fail_pod(senv, ns, "big", f"127.0.0.1:5999/big/one@{img.digest}")
        ev = wait_event(senv.cp, ns, "big", "ImageSalvageFailed", timeout=60)
        assert "too_large" in ev["note"] and "not retried" in ev["note"]
        (rec,) = wait_record(senv, ns, "Failed")
        st = rec["status"]
        assert st.get("retryCount", 0) == 0  # type: ignore[union-attr]
        assert any(c["reason"] == "Permanent" for c in st["conditions"])  # type: ignore[index]
        assert img.digest not in " ".join(senv.ctd.nodes["n1"].image_names())
        assert ctl.metric('tote_salvage_failures_total{reason="too_large"}') == 1
        time.sleep(5)  # no requeue: still Failed, still no retry
        (rec,) = records(senv.cp, ns)
        assert rec["status"].get("retryCount", 0) == 0  # type: ignore[union-attr]
    finally:
        ctl.stop()


def test_5_source_down_next_candidate_then_backoff_until_one_returns(
    senv: SalvageEnv, test_namespace: str, tmp_path: Path
) -> None:
    ns = test_namespace
    ctl = senv.controller("fallback")
    try:
        # (a) n2 (first by name) is down, n3 holds the image too → n3 is used.
        img = layered_image("127.0.0.1:5999/fb/app:v1", [1 * MiB], seed=22)
        archive = img.write_archive(tmp_path / "fb.tar")
        for node in ("n2", "n3"):
            senv.preload(node, img, archive)
        senv.stop_agent("n2")
        fail_pod(senv, ns, "fb", f"127.0.0.1:5999/fb/app@{img.digest}")
        (rec,) = wait_record(senv, ns, "Completed", timeout=60)
        assert rec["spec"]["sourceNode"] == "n3"  # type: ignore[index]

        # (b) the only holder's agent is down → Failed, retryCount grows, then it returns.
        only = layered_image("127.0.0.1:5999/fb/only:v1", [1 * MiB], seed=23)
        senv.preload("n2", only, only.write_archive(tmp_path / "only.tar"))
        fail_pod(senv, ns, "only", f"127.0.0.1:5999/fb/only@{only.digest}", node="n3")

        def only_record() -> dict[str, object]:
            return next(r for r in records(senv.cp, ns)
                        if r["spec"]["digest"] == only.digest)  # type: ignore[index]

        wait_until(lambda: any(r["spec"]["digest"] == only.digest  # type: ignore[index]
                               and r.get("status", {}).get("retryCount", 0) >= 1
                               for r in records(senv.cp, ns)),
                   timeout=60, what="first failed attempt recorded")
        rec = only_record()
        assert rec["status"]["phase"] == "Failed" and rec["status"]["lastAttemptAt"]  # type: ignore[index]
        ev = wait_event(senv.cp, ns, "only", "ImageSalvageFailed")
        assert "will retry" in ev["note"]
        senv.restart_agent("n2")
        t0 = time.monotonic()
        wait_until(lambda: only_record().get("status", {}).get("phase") == "Completed",  # type: ignore[union-attr]
                   timeout=75, what="completed after the source returned")
        rec = only_record()
        print(f"completed {time.monotonic() - t0:.0f}s after the agent returned "
              f"(back-off 30s after the first failure); retryCount "
              f"{rec['status']['retryCount']}")  # type: ignore[index]
        assert rec["status"]["retryCount"] >= 1  # type: ignore[index]
        assert f"127.0.0.1:5999/fb/only@{only.digest}" in senv.ctd.nodes["n3"].image_names()
    finally:
        if not senv.ctd.agents["n2"].proc.alive():
            senv.restart_agent("n2")
        ctl.stop()



def test_6_leader_killed_mid_transfer_other_replica_completes(
    senv: SalvageEnv, test_namespace: str, tmp_path: Path
) -> None:
    ns = test_namespace
    # A large enough image that the transfer is still running when the leader dies.
    img = layered_image("127.0.0.1:5999/ha/app:v1", [150 * MiB, 150 * MiB], seed=24,
                        spool_dir=tmp_path)
    senv.preload("n2", img, img.write_archive(tmp_path / "ha.tar"))
    a = senv.controller("ha-a", *FAST_LEASE, lease="ha")
    b = senv.controller("ha-b", *FAST_LEASE, lease="ha", wait_lead=False)
    try:
        time.sleep(2)
        leader, standby = (a, b) if a.leading() else (b, a)
        assert not standby.leading()
        owner = owner_rs(senv, ns, "ha-rs")
        ref = f"127.0.0.1:5999/ha/app@{img.digest}"
        create_pod(senv.cp, ns, "ha", ref, node="n1", owner=owner,
                   annotations={"tote.dev/auto-salvage": "true"})
        set_waiting(senv.cp, ns, "ha", reason="ErrImagePull", message=REFUSED)
        wait_until(lambda: any(r.get("status", {}).get("phase") == "Transferring"  # type: ignore[union-attr]
                               for r in records(senv.cp, ns)),
                   timeout=60, what="transfer started", interval=0.05)
        leader.kill()
        killed_at = time.monotonic()
        done = wait_record(senv, ns, "Completed", timeout=120)
        print(f"standby completed the salvage {time.monotonic() - killed_at:.1f}s after "
              f"the leader was killed")
        assert len(done) == 1  # exactly one record
        # Final progress equals the total, whichever leader saw the transfer end (issue 12:
        # it used to keep the dead leader's last report, e.g. "808.8MiB/1.0GiB (78%)").
        st: dict[str, object] = done[0]["status"]  # type: ignore[assignment]
        assert st["bytesTotal"] and st["bytesTransferred"] == st["bytesTotal"], st
        assert str(st["progress"]).endswith("(100%)"), st
        n1 = senv.ctd.nodes["n1"]
        assert ref in n1.image_names()
        check = n1.ctr("images", "check").stdout
        line = next(ln for ln in check.splitlines() if ref in ln)
        assert "complete" in line and "incomplete" not in line, line
        assert standby.metric("tote_salvage_successes_total") == 1
    finally:
        a.stop()
        b.stop()
