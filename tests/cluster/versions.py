"""Which Kubernetes, etcd, helm and containerd the harness runs, and where their binaries are.

The default pins live in `versions.env` (also sourced by the build scripts), each overridable
with `TOTE_<NAME>` in the environment. Binaries are built from Go modules into a cache keyed
by version (`build-binaries.sh`, `build-containerd.sh`), so several versions sit side by side
and the version matrix (`python -m tests.matrix`) can pick any pair, including a kubelet of
another version than the control plane (`TOTE_KUBELET_BIN_DIR`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
CONTAINERD_BUILD_SCRIPT = HERE / "build-containerd.sh"
CONTAINERD_BINARIES = ("containerd", "ctr", "containerd-shim-runc-v2")
NETWORK_BUILD_SCRIPT = HERE / "build-network.sh"
NETWORK_BINARIES = ("coredns", "kube-router")


def pins() -> dict[str, str]:
    """The default pins from versions.env, with `TOTE_<NAME>` overrides applied."""
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key] = os.environ.get(f"TOTE_{key}") or value
    return out


def pin(name: str) -> str:
    return pins()[name]


def bin_cache() -> Path:
    cache = os.environ.get("TOTE_BIN_CACHE")
    if cache:
        return Path(cache)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tote" / "bin"


def k8s_cache_dir() -> Path:
    p = pins()
    name = f"k8s-{p['K8S_VERSION']}-etcd-{p['ETCD_VERSION']}-helm-{p['HELM_VERSION']}"
    return bin_cache() / name


def kubelet_bin_dir(default: Path) -> Path:
    """Where the kubelet comes from: `TOTE_KUBELET_BIN_DIR` (another version's build, for
    skew tests) or the control plane's own build directory."""
    override = os.environ.get("TOTE_KUBELET_BIN_DIR")
    return Path(override) if override else default


def containerd_bin_dir(*, build: bool = False) -> Path | None:
    """The directory holding containerd, ctr and the runc shim of the pinned version.

    `TOTE_CONTAINERD_VERSION=system` means the Debian package's binaries on PATH. With
    `build=True` the build script runs first (about a minute, instant when cached).
    """
    version = pin("CONTAINERD_VERSION")
    if version == "system":
        found = shutil.which("containerd")
        return Path(found).parent if found else None
    if build:
        res = subprocess.run(
            ["bash", str(CONTAINERD_BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True
        )
        return Path(res.stdout.strip().splitlines()[-1])
    d = bin_cache() / f"containerd-{version}"
    return d if all(os.access(d / b, os.X_OK) for b in CONTAINERD_BINARIES) else None


def network_bin_dir(*, build: bool = False) -> Path | None:
    """The directory holding coredns and kube-router of the pinned versions
    (`COREDNS_VERSION`, `KUBE_ROUTER_VERSION`), or None when they are not built.

    With `build=True` the build script runs first (about a minute, instant when cached).
    """
    if build:
        res = subprocess.run(
            ["bash", str(NETWORK_BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True
        )
        return Path(res.stdout.strip().splitlines()[-1])
    p = pins()
    name = f"network-coredns-{p['COREDNS_VERSION']}-kube-router-{p['KUBE_ROUTER_VERSION']}"
    d = bin_cache() / name
    return d if all(os.access(d / b, os.X_OK) for b in NETWORK_BINARIES) else None


GO_FALLBACK = Path("/usr/local/go/bin")


def use_go() -> None:
    """Go (for the test images' static programs) where `.ci/install` finds it too: the official
    tarball's /usr/local/go/bin is not on a minimal PATH (`env -i`, cron, a non-login shell)."""
    if shutil.which("go") is None and (GO_FALLBACK / "go").exists():
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), str(GO_FALLBACK)])


def use_containerd(*, build: bool | None = None) -> Path | None:
    """Put the pinned containerd first on PATH for this process and everything it starts.

    containerd finds its shim (`containerd-shim-runc-v2`) on PATH, and the harness calls
    `containerd` and `ctr` by name, so one PATH entry switches the whole harness. runc stays
    Debian's (built with libseccomp). Returns the directory, or None when it is not built
    (callers skip or fail as they do for missing Kubernetes binaries). `build=True` builds it
    first when missing (default: only with `TOTE_BUILD_BINARIES=1`). Idempotent: every entry
    point that starts a containerd calls it (pytest's configure hook, the demo, benchmarks,
    `start_containerd`).
    """
    use_go()
    if build is None:
        build = os.environ.get("TOTE_BUILD_BINARIES") == "1"
    d = containerd_bin_dir(build=build)
    if d is None:
        return None
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[:1] != [str(d)]:
        os.environ["PATH"] = os.pathsep.join([str(d), path])
    return d


@functools.cache
def containerd_config_version(binary: str = "containerd") -> int:
    """The configuration format the containerd on PATH reads natively (2 for 1.x; 3 for
    2.0-2.3; 4 for 2.4+), from the first line of `containerd config default`. Writing that
    number avoids the in-memory migration (and its warning at every start)."""
    out = subprocess.run(
        [binary, "config", "default"], capture_output=True, text=True, check=True
    ).stdout
    # "version = 4" is the first line in 2.x; 1.7 prints it after other top-level keys.
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "version" and not line[:1].isspace():
            return int(value.strip())
    raise RuntimeError(f"cannot read the config version from {out[:200]!r}")


def containerd_major(binary: str = "containerd") -> int:
    """The major version of the containerd on PATH (1 or 2), from `containerd --version`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    # "containerd github.com/containerd/containerd/v2 v2.4.2 <rev>" / "... 1.6.20~ds1 ..."
    for word in out.split():
        w = word.lstrip("v")
        if w[:1].isdigit() and "." in w:
            return int(w.split(".", 1)[0])
    raise RuntimeError(f"cannot read containerd's version from {out!r}")
