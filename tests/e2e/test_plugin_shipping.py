"""Shipping a plugin, as its author would, on the three-node kubelet cluster.

1. the test plugin tests/images/plugins/tote-acme (its own distribution, entry point in group
   `tote`, typed settings through `settings_type`) is built into a wheel offline;
2. deploy/image/derive.py adds it to the tote image built here (build.py, cached): the
   tote image's layers as they are plus one layer, imported into every node's containerd;
3. `helm install` of the chart with that image and the plugin's settings given through
   `plugins.config` (`--set plugins.config.acme.greeting=…` on the command line, `events` in
   the values file);
4. a real salvage (registry outage: the image only on node B, an opted-in Deployment on the
   node without it), and the plugin's `notify` observed firing in the controller's log: one
   `acme-notify` line with the greeting, the `salvaged` type and the salvaged pod; nothing
   for the other notification types, which its `events` setting leaves out.

The release goes into a namespace of its own (`tote-plugins`), so it never meets the one
tests/e2e/test_helm_install.py installs into `tote-system` on the same session's cluster.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import tote_install
from tests.cluster.cluster import KubeCluster
from tests.cluster.procs import wait_until
from tests.cluster.tote_install import CHART, Helm, Install
from tests.images import plugins, tote_image

pytestmark = pytest.mark.e2e

NAMESPACE = "tote-plugins"
GREETING = f"hello from acme {os.urandom(3).hex()}"


def acme_lines(log: str, marker: str) -> list[dict[str, Any]]:
    """The JSON after `marker` on each line of the controller's log that has it."""
    return [json.loads(line.split(marker, 1)[1]) for line in log.splitlines() if marker in line]


@pytest.fixture(scope="module")
def acme_tote(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Install]:  # fmt: skip
    """The derived image with tote-acme, installed by helm with the plugin's settings."""
    work = tmp_path_factory.mktemp("plugin-shipping")
    t0 = time.monotonic()
    wheel = plugins.build_wheel("tote-acme", work / "wheel")
    t_wheel = time.monotonic()
    base = tote_image.build()
    t_base = time.monotonic()
    image = plugins.derive([wheel], out=work / "image")
    t_derive = time.monotonic()
    for node in kube_cluster.nodes:
        tote_image.import_into(image.archive, node.socket)
    t_import = time.monotonic()
    repository, tag = image.name.rsplit(":", 1)
    values = tote_install.harness_values(kube_cluster)
    values["image"] = {"repository": repository, "tag": tag}
    values["plugins"] = {"config": {"acme": {"events": ["salvaged"]}}}
    helm = Helm(kube_cluster.control_plane.bin_dir / "helm", kube_cluster.admin_kubeconfig,
                work / "helm-home")  # fmt: skip
    inst = Install(cluster=kube_cluster, helm=helm, workdir=work, image=image, values=values,
                   namespace=NAMESPACE)
    try:
        inst.notes = helm(
            "install", inst.release, str(CHART), "-n", NAMESPACE, "--create-namespace",
            "-f", str(inst.values_file(values)),
            "--set", f"plugins.config.acme.greeting={GREETING}",
            "--wait", "--timeout", "300s",
        )  # fmt: skip
        inst.wait_agents_ready()
        inst.wait_leading()
    except Exception as exc:
        logs = "\n".join(f"--- {k} ---\n{v[-3000:]}" for k, v in inst.logs(previous=True).items())
        inst.uninstall()
        kube_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        raise RuntimeError(f"{exc}\ntote pods:\n{logs}") from None
    inst.startup_seconds = {
        "plugin wheel": round(t_wheel - t0, 2),
        "tote image (build.py, cached layers)": round(t_base - t_wheel, 2),
        "derived image (one layer)": round(t_derive - t_base, 2),
        "import (all nodes)": round(t_import - t_derive, 2),
        "helm install until leading": round(time.monotonic() - t_import, 2),
    }
    print(f"tote + acme: {image.name} {image.digest} over {base.name} {base.digest}; "
          f"{inst.startup_seconds}")
    try:
        yield inst
    finally:
        inst.uninstall()
        kube_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def controller_log(inst: Install) -> str:
    (pod,) = inst.pods("controller")
    res = inst.cluster.kubectl("logs", pod["metadata"]["name"], "-n", inst.namespace)
    return str(res.stdout)


def test_1_controller_runs_the_derived_image_with_the_plugin_configured(
    acme_tote: Install, kube_cluster: KubeCluster
) -> None:
    (pod,) = acme_tote.pods("controller")
    status = pod["status"]["containerStatuses"][0]
    assert status["image"].endswith(acme_tote.image.name), status["image"]
    # the CRI's imageID of an imported image is its config digest (the image ID)
    assert status["imageID"].endswith(acme_tote.image.image_id), status["imageID"]
    args = pod["spec"]["containers"][0]["args"]
    assert f"--acme-greeting={GREETING}" in args, args
    assert "--acme-events=salvaged" in args, args
    for agent in acme_tote.pods("agent"):
        assert agent["status"]["containerStatuses"][0]["image"].endswith(
            acme_tote.image.name)
    # configure() got the settings the chart was given, typed (a list, not a string)
    wait_until(lambda: bool(acme_lines(controller_log(acme_tote), "acme-configured ")),
               timeout=60, interval=1, what="acme's configure logged")
    (configured,) = acme_lines(controller_log(acme_tote), "acme-configured ")
    assert configured == {"greeting": GREETING, "events": ["salvaged"]}, configured


def test_2_notify_fires_for_a_real_salvage(
    acme_tote: Install, kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    with tote_install.registry_outage(kube_cluster, tmp_path, "shop/acme",
                                      marker_prefix="acme") as out:
        pod = out.timeline.wait_running(timeout=180)
        print(f"salvage with the acme plugin: {out.timeline.summary()}")
        assert pod["spec"]["nodeName"] == kube_cluster.node.name
        assert kube_cluster.pod_logs(out.namespace, pod["metadata"]["name"]).count(out.marker)
        seen = {name for name, _ in out.timeline.pods}

        def salvaged() -> list[dict[str, Any]]:
            return [n for n in acme_lines(controller_log(acme_tote), "acme-notify ")
                    if n["type"] == "salvaged" and n["pod"].startswith(f"{out.namespace}/")]

        wait_until(lambda: bool(salvaged()), timeout=60, interval=1,
                   what="acme's notify logged the salvage")
        (line,) = salvaged()
        print(f"acme's notify: {line}")
        assert line["greeting"] == GREETING, line
        assert line["events"] == ["salvaged"], line
        assert line["pod"].split("/", 1)[1] in seen, (line, seen)
        assert line["digest"] == out.image_digest, line
        assert line["image"] == out.ref, line
        assert (line["source_node"], line["target_node"]) == (
            kube_cluster.node_b.name, kube_cluster.node.name), line
        # `events: [salvaged]` left the incident's other notifications (detected) out
        others = [n for n in acme_lines(controller_log(acme_tote), "acme-notify ")
                  if n["type"] != "salvaged"]
        assert not others, others
