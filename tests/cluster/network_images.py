"""OCI images of the test cluster's network add-ons, built locally from the binaries that
`build-network.sh` compiled (nothing is pulled).

`build_coredns_image` packs the static `coredns` into a one-layer image with `oci.build_image`
(the harness's image builder, like the pause and hello images): entrypoint `/coredns`, no
default arguments (the pod passes `-conf /etc/coredns/Corefile` and mounts its ConfigMap
there). The tag is the binary's own version, so a build of an overridden pin gets its own
name.

kube-router gets no image: it runs on each node as a host process (it needs the node's
network namespace and its iptables/ipset binaries).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cluster import oci

COREDNS_REPOSITORY = "tote.test/coredns"


def coredns_version(bin_dir: Path) -> str:
    """`v1.15.0` from `coredns -version` (first line `CoreDNS-1.15.0`)."""
    out = subprocess.run(
        [str(bin_dir / "coredns"), "-version"], capture_output=True, text=True, check=True
    ).stdout
    first = out.splitlines()[0] if out else ""
    name, _, version = first.partition("-")
    if name != "CoreDNS" or not version[:1].isdigit():
        raise RuntimeError(f"cannot read CoreDNS's version from {out!r}")
    return f"v{version.strip()}"


def build_coredns_image(workdir: Path, bin_dir: Path) -> oci.OciImage:
    """`tote.test/coredns:<version>` holding `bin_dir/coredns` as `/coredns` (the entrypoint)."""
    version = coredns_version(bin_dir)
    return oci.build_image(
        workdir,
        f"{COREDNS_REPOSITORY}:{version}",
        {"/coredns": bin_dir / "coredns"},
        entrypoint=["/coredns"],
        labels={"org.opencontainers.image.version": version},
    )
