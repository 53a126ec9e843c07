"""The tote image, built offline, runs on a real containerd the way the chart runs it.

Builds (or reuses from ~/.cache/tote/image) the OCI archive with deploy/image/build.py,
imports it with `ctr images import` into a real containerd's `k8s.io` namespace under the name
kubelet resolves the chart's default `image.repository: tote` to, and runs it with `ctr run`
(runc): `tote --version` must equal the package version, as the image's own user (65532) on a
read-only root filesystem, and the agent's `--help` must work too.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.procs import ProcessGroup
from tests.images import tote_image
from tests.integration.containerd.nodes import Node, containerd_unusable, start_node
from tote_core import __version__

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def image() -> Any:
    missing = tote_image.missing_tools()
    if missing:
        msg = f"{', '.join(missing)} not installed (.ci/install installs it)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(msg + " [CI is set: a missing tool is a failure]", pytrace=False)
        pytest.skip(msg)
    return tote_image.build()


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    why = containerd_unusable() or (None if shutil.which("runc") else "runc not installed")
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="tote-img-"))
    group = ProcessGroup(base / "logs")
    try:
        yield start_node(group, base / "nodes", "img")
    finally:
        group.stop_all()
        shutil.rmtree(base, ignore_errors=True)


def _blobs(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """index.json, manifest, config and the layer's member path, read from the archive."""
    with tarfile.open(archive) as tar:
        def read(name: str) -> Any:
            f = tar.extractfile(name)
            assert f is not None, name
            return json.loads(f.read())
        index = read("index.json")
        manifest = read("blobs/sha256/" + index["manifests"][0]["digest"][7:])
        config = read("blobs/sha256/" + manifest["config"]["digest"][7:])
    return index, manifest, config, "blobs/sha256/" + manifest["layers"][0]["digest"][7:]


def test_archive_names_version_labels(image: Any) -> None:
    index, manifest, config, _ = _blobs(image.archive)
    assert image.name == f"docker.io/library/tote:{__version__}"
    ann = index["manifests"][0]["annotations"]
    assert ann["io.containerd.image.name"] == image.name
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert config["config"]["Entrypoint"] == ["/opt/tote/bin/tote"]
    assert config["config"]["User"] == "65532:65532"
    assert config["architecture"] in ("amd64", "arm64") and config["os"] == "linux"
    assert manifest["layers"][0]["mediaType"].endswith("tar+gzip")


def test_no_compilers_caches_or_tests_inside(image: Any) -> None:
    _, _, _, layer = _blobs(image.archive)
    with tarfile.open(image.archive) as outer:
        f = outer.extractfile(layer)
        assert f is not None
        with tarfile.open(fileobj=gzip.GzipFile(fileobj=f), mode="r|") as tar:
            members = [(m.name.lstrip("./"), m.isfile()) for m in tar]
    names = [n for n, _ in members]
    docs = [n for n, is_file in members if is_file and n.startswith("usr/share/doc/")
            and not n.endswith("/copyright")]
    assert not docs, docs[:10]
    assert "opt/tote/bin/tote" in names
    site = "opt/tote/lib/python3.11/site-packages/"
    bad = [n for n in names if (
        ("/bin/" in "/" + n and n.rsplit("/", 1)[-1] in {"gcc", "cc", "c++", "g++", "clang",
                                                           "ld", "as", "pip", "pip3"})
        or n.startswith((site + "pip/", site + "setuptools/", "root/.cache/", "var/cache/apt/",
                         "tmp/tote-wheels"))
        # mmdebstrap leaves apt's empty lists directory (lock, partial/) behind; no lists
        or (n.startswith("var/lib/apt/lists/") and n.rsplit("/", 1)[-1] not in {"lock",
                                                                                 "partial"})
        or (n.startswith(site) and "/tests/" in n)
    )]
    assert not bad, bad[:20]


IMPORT_ALL = """
import importlib, pkgutil
names = []
for top in ("tote_core", "tote_containerd", "tote_registry", "tote_inheritance"):
    pkg = importlib.import_module(top)
    names.append(top)
    for m in pkgutil.walk_packages(pkg.__path__, top + "."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
            names.append(m.name)
print(len(names), "imported")
"""


def _run(node: Node, image: Any, cid: str, *argv: str, read_only: bool = True) -> str:
    args = ["run", "--rm", *(["--read-only"] if read_only else []), image.name, cid, *argv]
    res = node.ctr(*args, check=False, timeout=120)
    assert res.returncode == 0, f"ctr {' '.join(args)}: {res.stdout}{res.stderr}"
    return res.stdout


def test_runs_on_containerd(image: Any, node: Node) -> None:
    """Import as kubelet will find it, then run: version, user, agent help, read-only root."""
    tote_image.import_into(image.archive, node.socket)
    assert image.name in node.image_names()
    out = _run(node, image, "tote-version", "/opt/tote/bin/tote", "--version")
    assert out.strip() == f"tote {__version__}"
    assert _run(node, image, "tote-id", "/usr/bin/id", "-u").strip() == "65532"
    assert "--containerd-socket" in _run(node, image, "tote-agent-help", "tote", "agent",
                                         "--help")
    assert "--tls-cert" in _run(node, image, "tote-ctl-help", "tote", "controller", "--help")
    # Every module of tote and its plugins imports (native libraries of the wheels present).
    out = _run(node, image, "tote-imports", "/opt/tote/bin/python", "-c", IMPORT_ALL)
    assert out.strip().endswith("imported"), out
    # The agent refuses to start without mTLS or --insecure (the chart always passes one).
    res = node.ctr("run", "--rm", "--read-only", image.name, "tote-agent-refuses", "tote",
                   "agent", check=False, timeout=120)
    assert res.returncode != 0 and "refusing to start without mTLS" in res.stdout + res.stderr


def test_build_is_cached(image: Any) -> None:
    """A second build with the same inputs reuses the root filesystem layer."""
    again = tote_image.build(Path(os.environ.get("TMPDIR", "/tmp")) / "tote-image-again")
    assert again.cached and again.digest == image.digest
