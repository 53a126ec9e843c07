"""The tote image, built offline for every published architecture, runs the way the chart runs it.

Builds (or reuses from ~/.cache/tote/image) the OCI archives with deploy/image/build.py: one
per architecture (amd64, arm64) and the multi-architecture one (an image index over both, what
the release pushes). The host's archive is imported with `ctr images import` into a real
containerd's `k8s.io` namespace under the chart's default image name
(ghcr.io/tote-dev/tote:<version>) and run with `ctr run` (runc): `tote --version` must equal
the package version, as the image's own user (65532) on a read-only root filesystem, and the
agent's `--help` must work too. Each architecture's root filesystem is also unpacked and
`tote --version` run inside it with chroot: natively for the host's architecture, under
qemu-user-static (the emulator copied into the root filesystem and called explicitly, so no
binfmt_misc registration is involved) for the other one.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import registry as registry_mod
from tests.cluster.ci import require
from tests.cluster.containerd_env import Node, containerd_env
from tests.cluster.registry import start_registry
from tests.images import tote_image
from tote_core import __version__

pytestmark = pytest.mark.integration


REPOSITORY = "ghcr.io/tote-dev/tote"  # the chart's default image.repository
QEMU = {"arm64": "qemu-aarch64-static", "amd64": "qemu-x86_64-static"}
ELF_MACHINE = {"amd64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64




# Architectures that could not be built here, and why (filled by the `image` fixture).
UNBUILT: dict[str, str] = {}


@pytest.fixture(scope="module")
def image() -> Any:
    """Every architecture this machine can build; the others are noted in UNBUILT and each
    test that needs them `require`s them (so under CI a missing one fails)."""
    missing = tote_image.missing_tools()
    require(not missing, f"{', '.join(missing)} not installed (.ci/install installs it)")
    arches = []
    for arch in tote_image.all_arches():
        why = tote_image.foreign_unusable(arch)
        if why:
            UNBUILT[arch] = why
        else:
            arches.append(arch)
    return tote_image.build(arches=tuple(arches))


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    require(shutil.which("runc") is not None, "runc not installed")
    with containerd_env("tote-img-", ["img"], agents={}) as env:
        yield env.nodes["img"]


def _blobs(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """index.json, manifest, config and the layers' member paths, read from the archive."""
    with tarfile.open(archive) as tar:
        def read(name: str) -> Any:
            f = tar.extractfile(name)
            assert f is not None, name
            return json.loads(f.read())
        index = read("index.json")
        manifest = read("blobs/sha256/" + index["manifests"][0]["digest"][7:])
        config = read("blobs/sha256/" + manifest["config"]["digest"][7:])
    return index, manifest, config, ["blobs/sha256/" + la["digest"][7:]
                                     for la in manifest["layers"]]


def test_archive_names_version_labels(image: Any) -> None:
    index, manifest, config, _ = _blobs(image.archive)
    assert image.name == f"{REPOSITORY}:{__version__}"
    ann = index["manifests"][0]["annotations"]
    assert ann["io.containerd.image.name"] == image.name
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert config["config"]["Entrypoint"] == ["/opt/tote/bin/tote"]
    assert config["config"]["User"] == "65532:65532"
    assert config["architecture"] == tote_image.host_arch() and config["os"] == "linux"
    # Two layers: Debian + the venv with tote's dependencies, then tote itself.
    assert [la["mediaType"].endswith("tar+gzip") for la in manifest["layers"]] == [True, True]
    assert len(config["rootfs"]["diff_ids"]) == 2


def _read_json(tar: tarfile.TarFile, digest: str) -> Any:
    f = tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:"))
    assert f is not None, digest
    return json.loads(f.read())


def test_multiarch_archive_is_an_index_of_every_platform(image: Any) -> None:
    """index.json names one image index (the pushed reference); it lists a manifest per
    architecture whose config says that architecture, and every blob is in the archive."""
    require(not UNBUILT, "; ".join(UNBUILT.values()))
    assert image.index_archive is not None
    assert image.index_archive.name == f"tote-{__version__}.oci.tar"
    with tarfile.open(image.index_archive) as tar:
        names = set(tar.getnames())
        f = tar.extractfile("index.json")
        assert f is not None
        (top,) = json.loads(f.read())["manifests"]
        assert top["mediaType"] == "application/vnd.oci.image.index.v1+json"
        assert top["digest"] == image.index_digest
        assert top["annotations"]["io.containerd.image.name"] == image.name
        assert top["annotations"]["org.opencontainers.image.ref.name"] == __version__
        idx = _read_json(tar, top["digest"])
        plats = {m["platform"]["architecture"]: m for m in idx["manifests"]}
        assert set(plats) == set(tote_image.all_arches())
        assert {a: m["digest"] for a, m in plats.items()} == image.platforms
        layers = {}
        for arch, desc in plats.items():
            assert desc["platform"]["os"] == "linux"
            manifest = _read_json(tar, desc["digest"])
            layers[arch] = [la["digest"] for la in manifest["layers"]]
            config = _read_json(tar, manifest["config"]["digest"])
            assert (config["architecture"], config["os"]) == (arch, "linux")
            assert config["config"]["Labels"]["org.opencontainers.image.version"] == __version__
            for layer in manifest["layers"]:
                assert "blobs/sha256/" + layer["digest"][7:] in names
    # One base layer per architecture; tote's own layer (pure Python) is shared by all.
    assert len({m["digest"] for m in idx["manifests"]}) == len(plats)
    assert len({ls[0] for ls in layers.values()}) == len(plats)
    assert len({ls[1] for ls in layers.values()}) == 1


def _unpack_layer(layer: Path, root: Path) -> None:
    """A layer unpacked onto `root` (device nodes left out: chroot needs none here)."""
    res = subprocess.run(["tar", "-xzf", str(layer), "-C", str(root), "--exclude=./dev/*",
                          "--no-same-owner"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", path
    return int.from_bytes(head[18:20], "little")


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_tote_version_in_each_architecture_root(image: Any, arch: str,
                                                tmp_path: Path) -> None:
    """`tote --version` run inside the architecture's own root filesystem (chroot), natively
    or under qemu-user-static, prints the package version."""
    require(arch not in UNBUILT, UNBUILT.get(arch))
    root = tmp_path / "root"
    root.mkdir()
    for layer in image.layers[arch]:  # the base layer, then tote's (adds files only)
        _unpack_layer(Path(layer), root)
    python = (root / "usr/bin/python3").resolve()  # a relative symlink inside the root
    assert _elf_machine(python) == ELF_MACHINE[arch], f"{python} is not {arch}"
    argv = ["/opt/tote/bin/tote", "--version"]
    if arch != tote_image.host_arch():
        qemu = shutil.which(QEMU[arch])
        require(qemu is not None,
                f"{QEMU[arch]} not installed (.ci/install installs qemu-user-static)")
        assert qemu is not None
        shutil.copy2(qemu, root / "qemu-static")
        # The emulator runs the interpreter itself; the script's shebang is not exec'ed.
        argv = ["/qemu-static", "/opt/tote/bin/python", *argv]
    # chroot lives in /usr/sbin, which a non-login PATH may lack.
    binary = shutil.which("chroot", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert binary is not None, "chroot (coreutils) not found"
    chroot = [binary, str(root)] if os.geteuid() == 0 else \
        ["unshare", "--map-root-user", binary, str(root)]
    res = subprocess.run([*chroot, *argv], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/opt/tote/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert res.returncode == 0, f"{' '.join(argv)} in {arch}: {res.stdout}{res.stderr}"
    assert res.stdout.strip() == f"tote {__version__}"


def test_no_compilers_caches_or_tests_inside(image: Any) -> None:
    _, _, _, layers = _blobs(image.archive)
    members = []
    with tarfile.open(image.archive) as outer:
        for layer in layers:
            f = outer.extractfile(layer)
            assert f is not None
            with tarfile.open(fileobj=gzip.GzipFile(fileobj=f), mode="r|") as tar:
                members += [(m.name.lstrip("./"), m.isfile()) for m in tar]
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


# tote_core.testing is the pytest plugin for plugin authors: it needs pytest, which the
# image (rightly) does not have, and nothing in the image imports it.
IMPORT_ALL = """
import importlib, pkgutil
names = []
for top in ("tote_core", "tote_containerd", "tote_registry", "tote_inheritance"):
    pkg = importlib.import_module(top)
    names.append(top)
    for m in pkgutil.walk_packages(pkg.__path__, top + "."):
        if m.name.startswith("tote_core.testing"):
            continue
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


def test_multiarch_archive_imports_and_runs(image: Any, node: Node) -> None:
    """What the release pushes imports into containerd like the single-platform archive: the
    name points at the image index and `ctr run` resolves it to the host's platform."""
    require(image.index_archive is not None, "; ".join(UNBUILT.values()))
    tote_image.import_into(image.index_archive, node.socket, namespace="multiarch")
    res = node.ctr("images", "ls", namespace="multiarch", check=False)
    assert res.returncode == 0 and image.index_digest in res.stdout, res.stdout + res.stderr
    run = node.ctr("run", "--rm", "--read-only", image.name, "tote-multiarch-version", "tote",
                   "--version", namespace="multiarch", check=False, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == f"tote {__version__}"


def test_multiarch_push_serves_every_platform(image: Any, tmp_path: Path) -> None:
    """The release's push (`skopeo copy --all` of the multi-arch archive) to a real registry:
    the tag resolves to the image index built here, and each platform to its own manifest."""
    require(image.index_archive is not None, "; ".join(UNBUILT.values()))
    require(shutil.which("skopeo") is not None and registry_mod.available(),
            "skopeo or docker-registry not installed (.ci/install installs them)")
    reg = start_registry(tmp_path / "registry")
    try:
        dest = f"docker://{reg.host}/tote-dev/tote:{__version__}"
        res = subprocess.run(["skopeo", "copy", "--all", "--dest-tls-verify=false",
                              f"oci-archive:{image.index_archive}", dest],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        assert reg.manifest_digest("tote-dev/tote", __version__) == image.index_digest
        for arch, digest in image.platforms.items():
            res = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config",
                                  f"docker://{reg.host}/tote-dev/tote@{digest}"],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            config = json.loads(res.stdout)
            assert (config["architecture"], config["os"]) == (arch, "linux")
    finally:
        reg.stop()


def test_build_is_cached(image: Any) -> None:
    """A second build with the same inputs reuses every root filesystem layer and writes the
    same manifests and image index."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "tote-image-again"
    # The same wheel: the work tree may have changed since (and then it would be rebuilt).
    again = tote_image.build(out, arches=tuple(image.platforms), wheel=image.wheel)
    assert again.cached and again.layers == image.layers
    # The manifests carry the git revision as a label: equal unless a commit came in between.
    rev = "org.opencontainers.image.revision"
    if _blobs(again.archive)[2]["config"]["Labels"][rev] == \
            _blobs(image.archive)[2]["config"]["Labels"][rev]:
        assert again.digest == image.digest
        assert again.platforms == image.platforms and again.index_digest == image.index_digest
