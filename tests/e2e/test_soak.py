"""The soak's short version (tests/cluster/soak.py, 5 minutes; the hour is
tests/bench/bench_soak.py): tote installed by helm
with two controller replicas on the real cluster, a salvage workload every few seconds,
the registry flapping, agent pods deleted, containerds restarted, the leader killed and
packets between nodes dropped — at a faster churn than the hour-long run so each kind
happens at least once. Then: every pod whose image had a source reached Running, and a
quiet cluster holds no leaked lease, ingest, partial file, extraction snapshot, duplicate
record or pinned image without a record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import tote_install
from tests.cluster.cluster import KubeCluster
from tests.cluster.soak import SOAK_VALUES, Knobs, Soak, print_report
from tests.cluster.tote_install import Install

pytestmark = pytest.mark.e2e

SHORT = Knobs(minutes=5, every=5, payload_mib=2, registry_flap=25, agent_restart=60,
              containerd_restart=90, leader_kill=100, fault=45, sample_every=30)


@pytest.fixture(scope="module")
def tote(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Install]:  # fmt: skip
    inst = tote_install.install_tote(kube_cluster, tmp_path_factory.mktemp("helm-soak"),
                                     extra_values=SOAK_VALUES)  # fmt: skip
    try:
        yield inst
    finally:
        inst.uninstall()


def test_soak_short(kube_cluster: KubeCluster, tote: Install, tmp_path: Path) -> None:
    report = Soak(kube_cluster, tote, tmp_path, SHORT).run()
    print_report(report)
    # Each kind of churn happened (the schedule is seeded; a run too slow to reach one is a
    # finding too).
    assert set(report.churn) == {"registry flaps", "agent pods deleted", "containerd restarts",
                                 "leader kills", "transfer faults"}, report.churn
    assert report.cycles >= 20, report.cycles
    # Every workload had a source (its image was loaded onto another node): all ran.
    assert report.never_running == [], (report.never_running, tote.logs(previous=True))
    assert report.salvaged > 0, "no workload was salvaged: the registry was never down?"
    assert report.leaked() == 0, report.leaks
