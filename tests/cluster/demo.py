"""The embedded default: a local real cluster and a demo incident, narrated.

Brings up etcd + kube-apiserver (built from Go modules, cached), installs tote's CRD and
RBAC from the chart, starts `tote controller` with the restricted identity, then plays an
incident: node `demo-node-b` holds an image by digest, a Deployment's pod on `demo-node-a`
fails to pull it. What tote detects is printed as it happens (Kubernetes events), then
everything is torn down (`--keep` leaves it running until Ctrl-C).

Run: python -m tests.cluster.demo [--keep]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.cluster.controller import ControllerProcess
from tests.cluster.controlplane import binaries_dir, start_control_plane
from tests.cluster.objects import create_node, create_pod, set_waiting, tote_events
from tests.cluster.procs import wait_until

DIGEST = "sha256:" + "5e" * 32
IMAGE = f"registry.demo.local:5000/shop/web@{DIGEST}"


def say(text: str) -> None:
    print(f"[tote demo] {text}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.cluster.demo")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up until Ctrl-C")
    args = ap.parse_args()
    say("building or locating Kubernetes binaries (first run builds from Go modules)…")
    bins = binaries_dir(build=True)
    if bins is None:
        say("could not build the Kubernetes binaries; see tests/cluster/build-binaries.sh")
        return 1
    work = Path(tempfile.mkdtemp(prefix="tote-demo-"))
    t0 = time.monotonic()
    cp = start_control_plane(work / "cp", bins)
    ctl = None
    try:
        say(f"control plane up at {cp.server} in {time.monotonic() - t0:.1f}s; "
            f"admin kubeconfig: {cp.admin_kubeconfig}")
        ctl = ControllerProcess(cp, work / "ctl", identity="demo").start()
        wait_until(ctl.leading, timeout=30, what="controller leads")
        say("tote controller running as ServiceAccount tote-system/tote-controller "
            f"(metrics http://127.0.0.1:{ctl.port}/metrics)")
        create_node(cp, "demo-node-b", [[IMAGE, "registry.demo.local:5000/shop/web:1.4"]])
        create_node(cp, "demo-node-a")
        say(f"node demo-node-b holds {IMAGE}; demo-node-a does not")
        cp.apply({"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": "shop", "annotations": {"tote.dev/allow": "true"}}})
        create_pod(cp, "shop", "web-7d9f-x2x", IMAGE, node="demo-node-a",
                   annotations={"tote.dev/auto-salvage": "true"})
        say("namespace shop opted in (tote.dev/allow); pod web-7d9f-x2x opted in "
            "(tote.dev/auto-salvage) and scheduled to demo-node-a")
        set_waiting(cp, "shop", "web-7d9f-x2x", reason="ErrImagePull",
                    message="failed to pull: registry.demo.local:5000: no such host")
        say("the registry is gone: the pod's container is waiting with ErrImagePull")
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            for ev in tote_events(cp, "shop"):
                if ev["metadata"]["name"] not in seen:
                    seen.add(ev["metadata"]["name"])
                    say(f"EVENT {ev['type']} {ev['reason']}: {ev['note']}")
            time.sleep(0.5)
        say("kubectl events shows the same story:")
        print(cp.kubectl("events", "-n", "shop").stdout, flush=True)
        metrics = ctl.metrics()
        say("metrics: " + json.dumps({k: v for k, v in metrics.items()
                                      if k.startswith("tote_") and "total" in k and v}))
        if args.keep:
            say(f"cluster left running; KUBECONFIG={cp.admin_kubeconfig}. Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if seen else 1
    finally:
        if ctl is not None:
            ctl.stop()
        cp.stop()
        say("stopped every process the demo started")


if __name__ == "__main__":
    sys.exit(main())
