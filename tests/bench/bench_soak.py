"""Soak benchmark: tote under churn on the real cluster for `--minutes` (tests/cluster/soak.py
says what runs and what is checked).

`python -m tests.bench.bench_soak --minutes 60 [--every 5] [--seed 26] [--json out.json]`
(root; `.ci/install` done). Every knob of `Knobs` is a flag. Exit status 1 when a pod never
ran or anything leaked. Documented with its figures in docs/benchmarks.md ("Soak"); for 24 h
elsewhere, `--minutes 1440`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from tests.cluster.cluster import start_cluster
from tests.cluster.controlplane import binaries_dir
from tests.cluster.soak import SOAK_VALUES, Knobs, Soak, print_report
from tests.cluster.tote_install import install_tote


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = Knobs()
    for name, value in asdict(defaults).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()
    knobs = Knobs(**{k: getattr(args, k) for k in asdict(defaults)})
    work = Path(tempfile.mkdtemp(prefix="tote-soak-"))
    bins = binaries_dir(build=True)
    assert bins is not None, "Kubernetes binaries missing: run .ci/install"
    cluster = start_cluster(work / "cluster", bins)
    try:
        tote = install_tote(cluster, work / "tote", extra_values=SOAK_VALUES)
        report = Soak(cluster, tote, work / "soak", knobs).run()
        print_report(report)
        if args.json:
            args.json.write_text(json.dumps(asdict(report), indent=1))
        return 0 if not report.never_running and not report.leaked() else 1
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
