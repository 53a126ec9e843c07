"""Build the e2e cluster's OCI images locally (nothing is pulled) and load them into nodes.

Two tiny static Go programs live next to this file:

- `pause/`: the pod-sandbox process (containerd's `sandbox_image`);
- `hello/`: the test workload; prints a marker (its first argument) and sleeps until stopped.

They are compiled with the machine's Go toolchain (`CGO_ENABLED=0`, cached by source hash
under `~/.cache/tote-test/cluster-bin/`), packed into OCI image layouts with `umoci`
(init → new → insert → config), and then either

- imported into a containerd namespace (`ctr images import` of an OCI archive whose index
  carries `io.containerd.image.name`, exactly what a previous pull would have left), or
- pushed to a registry with `skopeo copy oci:… docker://…` (digests preserved).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN_CACHE = (
    Path(os.environ.get("TOTE_TEST_CACHE", Path.home() / ".cache" / "tote-test")) / "cluster-bin"
)

PAUSE_IMAGE = "tote.test/pause:v1"
HELLO_IMAGE = "tote.test/hello:v1"

REQUIRED_TOOLS = ("go", "umoci", "skopeo", "ctr")


def missing_tools() -> list[str]:
    return [t for t in REQUIRED_TOOLS if shutil.which(t) is None]


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stderr}{res.stdout}")
    return res  # type: ignore[no-any-return]


def go_binary(program: str) -> Path:
    """Compile `tests/cluster/<program>/` statically; cached by a hash of its sources."""
    src = HERE / program
    h = hashlib.sha256()
    for f in sorted(src.glob("*")):
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    out = BIN_CACHE / f"{program}-{h.hexdigest()[:16]}"
    if out.exists():
        return out
    BIN_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod",
        "GOOS": "linux",
        "GOARCH": go_arch(),
    }
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."], cwd=src, env=env)
    tmp.rename(out)
    return out


def go_arch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


@dataclass(frozen=True)
class OciImage:
    """One single-platform image in an OCI layout directory (`layout:tag`)."""

    name: str  # the reference pods use, e.g. tote.test/hello:v1
    layout: Path
    tag: str
    digest: str  # manifest digest
    config_digest: str  # the image ID kubelet/CRI report

    def manifest(self) -> dict[str, Any]:
        data = (self.layout / "blobs" / "sha256" / self.digest.split(":", 1)[1]).read_text()
        return dict(json.loads(data))

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
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == self.tag
        ]
        for m in keep:
            m["annotations"]["io.containerd.image.name"] = name
        index["manifests"] = keep
        with tarfile.open(path, "w") as tar:
            for f in sorted((self.layout / "blobs").rglob("*")):
                tar.add(f, arcname=str(f.relative_to(self.layout)), recursive=False)
            for fname, data in (
                ("oci-layout", (self.layout / "oci-layout").read_bytes()),
                ("index.json", json.dumps(index).encode()),
            ):
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        return path

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
        for ref in (name or self.name,):
            _run(
                [
                    "ctr",
                    "--address",
                    socket,
                    "--namespace",
                    namespace,
                    "images",
                    "label",
                    ref,
                    "io.cri-containerd.image=managed",
                ],
                timeout=60,
            )

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
    """Build an image: `files` maps in-image paths to host files (all 0755) in one layer;
    each of `extra_layers` (same form) becomes a layer of its own on top."""
    workdir.mkdir(parents=True, exist_ok=True)
    slug = name.replace("/", "_").replace(":", "_").replace("@", "_")
    layout = workdir / f"layout-{slug}"
    if layout.exists():
        shutil.rmtree(layout)
    tag = "img"
    ref = f"{layout}:{tag}"
    _run(["umoci", "init", "--layout", str(layout)])
    _run(["umoci", "new", "--image", ref])
    for n, layer in enumerate([files, *(extra_layers or [])]):
        rootfs = workdir / f"rootfs-{slug}-{n}"
        if rootfs.exists():
            shutil.rmtree(rootfs)
        rootfs.mkdir(parents=True)
        for dest, src in layer.items():
            target = rootfs / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            target.chmod(0o755)
        _run(["umoci", "insert", "--image", ref, str(rootfs), "/"])
        shutil.rmtree(rootfs)
    argv = [
        "umoci", "config", "--image", ref, "--os", "linux", "--architecture", go_arch(),
        "--no-history",
    ]  # fmt: skip
    for e in entrypoint:
        argv += ["--config.entrypoint", e]
    for c in cmd or []:
        argv += ["--config.cmd", c]
    for k, v in (env or {}).items():
        argv += ["--config.env", f"{k}={v}"]
    for k, v in (labels or {}).items():
        argv += ["--config.label", f"{k}={v}"]
    _run(argv)
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    digest = desc["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())
    return OciImage(
        name=name, layout=layout, tag=tag, digest=digest,
        config_digest=manifest["config"]["digest"],
    )  # fmt: skip


def build_pause(workdir: Path, name: str = PAUSE_IMAGE) -> OciImage:
    return build_image(workdir, name, {"/pause": go_binary("pause")}, entrypoint=["/pause"])


def build_hello(workdir: Path, name: str = HELLO_IMAGE, *, marker: str | None = None) -> OciImage:
    """The workload image: `/hello <marker>`; a distinct marker gives a distinct digest."""
    marker = marker or f"hello from {name}"
    return build_image(
        workdir, name, {"/hello": go_binary("hello")},
        entrypoint=["/hello"], cmd=[marker], labels={"dev.tote.test.marker": marker},
    )  # fmt: skip
