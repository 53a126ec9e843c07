"""The e2e cluster's OCI images (built locally, nothing is pulled) and loading them into nodes.

Two tiny static Go programs live next to this file:

- `pause/`: the pod-sandbox process (containerd's `sandbox_image`);
- `hello/`: the test workload; prints a marker (its first argument) and sleeps until stopped.

They are compiled with the machine's Go toolchain (`CGO_ENABLED=0`, cached by source hash),
packed by the harness's image builder (tests/cluster/images.py) into OCI image-layout
directories, and then either

- imported into a containerd namespace (`ctr images import` of an OCI archive whose index
  carries `io.containerd.image.name`, exactly what a previous pull would have left), or
- pushed to a registry with `skopeo copy oci:… docker://…` (digests preserved).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster import images
from tests.cluster.images import go_arch

HERE = Path(__file__).resolve().parent

PAUSE_IMAGE = "tote.test/pause:v1"
HELLO_IMAGE = "tote.test/hello:v1"
# What a container's PATH is when the image does not say (the OCI runtimes' default).
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

REQUIRED_TOOLS = ("go", "skopeo", "ctr")

__all__ = ["HELLO_IMAGE", "PAUSE_IMAGE", "OciImage", "build_hello", "build_image",
           "build_pause", "go_arch", "go_binary", "missing_tools"]


def missing_tools() -> list[str]:
    return [t for t in REQUIRED_TOOLS if shutil.which(t) is None]


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stderr}{res.stdout}")
    return res  # type: ignore[no-any-return]


def go_binary(program: str) -> Path:
    """Compile `tests/cluster/<program>/` statically for the host; cached by source hash."""
    return images.go_binary(HERE / program)


@dataclass(frozen=True)
class OciImage:
    """One single-platform image in an OCI layout directory (`layout:tag`)."""

    name: str  # the reference pods use, e.g. tote.test/hello:v1
    layout: Path
    tag: str
    digest: str  # manifest digest
    config_digest: str  # the image ID kubelet/CRI report

    def _blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    def manifest(self) -> dict[str, Any]:
        return dict(json.loads(self._blob_path(self.digest).read_text()))

    @property
    def layer_digests(self) -> list[str]:
        return [str(layer["digest"]) for layer in self.manifest()["layers"]]

    @property
    def source(self) -> str:
        return f"{self.layout}:{self.tag}"

    def archive(self, path: Path | None = None, *, name: str | None = None) -> Path:
        """An OCI archive (tar of the layout) that `ctr images import` names `name`."""
        name = name or self.name
        path = path or self.layout.parent / f"{self.layout.name}-{self.tag}.tar"
        index = json.loads((self.layout / "index.json").read_text())
        keep = [
            m for m in index["manifests"]
            if m.get("annotations", {}).get(images.REF_NAME) == self.tag
        ]  # fmt: skip
        for m in keep:
            m["annotations"][images.CONTAINERD_NAME] = name
        index["manifests"] = keep
        blobs = [
            images.Blob("", None, "sha256:" + f.name, f.stat().st_size, f)
            for f in sorted((self.layout / "blobs" / "sha256").iterdir())
        ]  # fmt: skip
        return images.write_oci_archive(path, index, blobs)

    def import_into(
        self,
        socket: str,
        *,
        name: str | None = None,
        namespace: str = "k8s.io",
        unpack: bool = True,
    ) -> None:
        """`ctr images import` into a containerd (what a previous pull would have left)."""
        arch = self.archive(name=name)
        argv = ["ctr", "--address", socket, "--namespace", namespace, "images", "import"]
        if not unpack:
            argv.append("--no-unpack")
        _run([*argv, str(arch)], timeout=120)
        # CRI only lists images it manages; a pull would have set this label.
        _run(
            [
                "ctr", "--address", socket, "--namespace", namespace,
                "images", "label", name or self.name, "io.cri-containerd.image=managed",
            ],
            timeout=60,
        )  # fmt: skip

    def push(self, dest: str, *, insecure: bool = True) -> str:
        """`skopeo copy` to `docker://dest` (e.g. 127.0.0.1:5000/tote/hello:v1); the digest."""
        argv = ["skopeo", "copy", "--quiet", "--preserve-digests"]
        if insecure:
            argv.append("--dest-tls-verify=false")
        _run([*argv, f"oci:{self.source}", f"docker://{dest}"], timeout=120)
        return self.digest


def build_image(
    workdir: Path,
    name: str,
    files: dict[str, Path],
    *,
    entrypoint: list[str],
    cmd: list[str] | None = None,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    extra_layers: list[dict[str, Path]] | None = None,
) -> OciImage:
    """Build an image for the host's architecture: `files` maps in-image paths to host files
    (all 0755) in one layer; each of `extra_layers` (same form) becomes a layer of its own
    on top. Written as an OCI layout under `workdir` (tag `img`).

    The first layer also holds `/etc/tote-test-image` (the image's name): layers are written
    deterministically, so without it two images of the same program would share their
    layer, and a node holding one would already have the other's snapshot — tests that delete
    a layer blob or count what a salvage moved need each image's layers to be its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    slug = name.replace("/", "_").replace(":", "_").replace("@", "_")
    spools = [workdir / f"layer-{slug}-{n}.tar" for n in range(1 + len(extra_layers or []))]
    first: dict[str, Path | bytes] = {**files, "/etc/tote-test-image": name.encode() + b"\n"}
    contents: list[Mapping[str, Path | bytes]] = [first, *(extra_layers or [])]
    try:
        layers = [images.file_layer(layer, spool=spool)
                  for layer, spool in zip(contents, spools, strict=True)]
        image = images.single_image(
            name, layers, arch=go_arch(), entrypoint=entrypoint, cmd=cmd,
            env=[DEFAULT_PATH, *(f"{k}={v}" for k, v in (env or {}).items())], labels=labels,
        )  # fmt: skip
        tag = "img"
        layout = image.write_layout(workdir / f"layout-{slug}", tag)
    finally:
        for spool in spools:
            spool.unlink(missing_ok=True)
    return OciImage(name=name, layout=layout, tag=tag, digest=image.digest,
                    config_digest=next(iter(image.configs.values())).digest)


def build_pause(workdir: Path, name: str = PAUSE_IMAGE) -> OciImage:
    return build_image(workdir, name, {"/pause": go_binary("pause")}, entrypoint=["/pause"])


def build_hello(workdir: Path, name: str = HELLO_IMAGE, *, marker: str | None = None) -> OciImage:
    """The workload image: `/hello <marker>`; a distinct marker gives a distinct digest."""
    marker = marker or f"hello from {name}"
    return build_image(
        workdir, name, {"/hello": go_binary("hello")},
        entrypoint=["/hello"], cmd=[marker], labels={"dev.tote.test.marker": marker},
    )  # fmt: skip
