"""The version matrix: tote's real-component suites against every supported pairing.

    python -m tests.matrix                 # every cell, then a table
    python -m tests.matrix --cells k137-c2,k134-c17 --suites containerd,salvage

A cell is (control plane, kubelet, containerd[, nodes that discard layer blobs after
unpack]). Each runs, in its own pytest process, the
containerd integration suite, the salvage integration suite and the e2e scenarios, with the
cell's binaries selected through the environment (`TOTE_K8S_VERSION`, `TOTE_ETCD_VERSION`,
`TOTE_CONTAINERD_VERSION`, `TOTE_KUBELET_BIN_DIR`; tests/cluster/versions.py). Missing
binaries are built first (cached afterwards). The table (markdown) goes to stdout and, with
`--out FILE`, to a file; docs/e2e-cluster.md carries the one from the last full run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tests.cluster import versions

REPO = Path(__file__).resolve().parents[1]
ETCD_FOR = {"v1.34.4": "v3.6.4", "v1.37.2": "v3.7.3"}
SUITES = {
    "containerd": "tests/integration/containerd",
    "salvage": "tests/integration/salvage",
    "e2e": "tests/e2e",
}


@dataclass(frozen=True)
class Cell:
    name: str
    k8s: str  # control plane (apiserver, controller-manager, scheduler, etcd)
    kubelet: str
    containerd: str
    discard: bool = False  # nodes discard layer blobs after unpack (EKS-like node images)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TOTE_K8S_VERSION=self.k8s,
            TOTE_ETCD_VERSION=ETCD_FOR[self.k8s],
            TOTE_CONTAINERD_VERSION=self.containerd,
            TOTE_DISCARD_UNPACKED_LAYERS="1" if self.discard else "",
        )
        env.pop("TOTE_KUBELET_BIN_DIR", None)
        env.pop("TOTE_BIN_DIR", None)
        if self.kubelet != self.k8s:
            env["TOTE_KUBELET_BIN_DIR"] = str(_k8s_dir(self.kubelet))
        return env


CELLS = (
    Cell("k137-c2", "v1.37.2", "v1.37.2", "v2.4.2"),
    Cell("k137-c17", "v1.37.2", "v1.37.2", "v1.7.35"),
    Cell("k134-c2", "v1.34.4", "v1.34.4", "v2.4.2"),
    Cell("k134-c17", "v1.34.4", "v1.34.4", "v1.7.35"),
    Cell("k137-kubelet134-c2", "v1.37.2", "v1.34.4", "v2.4.2"),  # kubelet three minors older
    # Managed-cluster node images (EKS): every node discards its layer blobs after unpack;
    # a 2.x config and a 1.7 config.
    Cell("k137-c2-discard", "v1.37.2", "v1.37.2", "v2.4.2", discard=True),
    Cell("k137-c17-discard", "v1.37.2", "v1.37.2", "v1.7.35", discard=True),
)


def _k8s_dir(version: str) -> Path:
    helm = versions.pins()["HELM_VERSION"]
    return versions.bin_cache() / f"k8s-{version}-etcd-{ETCD_FOR[version]}-helm-{helm}"


def build(cell: Cell) -> None:
    """Build (or find cached) every binary the cell needs."""
    for k8s in {cell.k8s, cell.kubelet}:
        env = dict(os.environ, TOTE_K8S_VERSION=k8s, TOTE_ETCD_VERSION=ETCD_FOR[k8s])
        subprocess.run(["bash", "tests/cluster/build-binaries.sh"], cwd=REPO, env=env,
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    env = dict(os.environ, TOTE_CONTAINERD_VERSION=cell.containerd)
    subprocess.run(["bash", "tests/cluster/build-containerd.sh"], cwd=REPO, env=env,
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip


@dataclass
class Outcome:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    error: str = ""

    def cell_text(self) -> str:
        if self.error:
            return f"error: {self.error}"
        mark = "✅" if self.failed == 0 and self.passed else "❌"
        text = f"{mark} {self.passed} passed"
        if self.failed:
            text += f", {self.failed} failed"
        if self.skipped:
            text += f", {self.skipped} skipped"
        return f"{text} ({self.seconds:.0f} s)"


def run_suite(cell: Cell, suite: str, report_dir: Path) -> Outcome:
    xml = report_dir / f"{cell.name}-{suite}.xml"
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", f"--junitxml={xml}",
         SUITES[suite]],
        cwd=REPO, env=cell.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = Outcome(seconds=time.monotonic() - t0)
    (report_dir / f"{cell.name}-{suite}.log").write_text(res.stdout)
    if not xml.exists():
        out.error = f"pytest exited {res.returncode} without a report"
        return out
    for suite_el in ET.parse(xml).getroot().iter("testsuite"):
        tests = int(suite_el.get("tests", 0))
        failures = int(suite_el.get("failures", 0)) + int(suite_el.get("errors", 0))
        skipped = int(suite_el.get("skipped", 0))
        out.passed += tests - failures - skipped
        out.failed += failures
        out.skipped += skipped
    return out


def table(results: dict[tuple[str, str], Outcome], cells: list[Cell], suites: list[str]) -> str:
    head = "| control plane | kubelet | containerd | " + " | ".join(suites) + " |"
    rule = "|---|---|---|" + "---|" * len(suites)
    rows = [
        f"| {c.k8s} | {c.kubelet} | {c.containerd} | "
        + " | ".join(results[(c.name, s)].cell_text() for s in suites)
        + " |"
        for c in cells
    ]
    return "\n".join([head, rule, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.matrix", description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default=",".join(c.name for c in CELLS))
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("--reports", type=Path, default=Path("/tmp/tote-matrix"))
    args = ap.parse_args(argv)
    by_name = {c.name: c for c in CELLS}
    unknown = [n for n in args.cells.split(",") if n not in by_name]
    if unknown:
        ap.error(f"unknown cells {unknown}; known: {sorted(by_name)}")
    cells = [by_name[n] for n in args.cells.split(",")]
    suites = args.suites.split(",")
    args.reports.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], Outcome] = {}
    for cell in cells:
        try:
            build(cell)
        except subprocess.CalledProcessError as exc:
            for s in suites:
                results[(cell.name, s)] = Outcome(error=f"build failed ({exc.returncode})")
            continue
        for s in suites:
            print(f"[matrix] {cell.name}: {s} …", file=sys.stderr, flush=True)
            results[(cell.name, s)] = run_suite(cell, s, args.reports)
            print(f"[matrix] {cell.name}: {s}: {results[(cell.name, s)].cell_text()}",
                  file=sys.stderr, flush=True)  # fmt: skip
    text = table(results, cells, suites)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    bad = any(r.error or r.failed or not r.passed for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
