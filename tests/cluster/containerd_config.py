"""containerd configuration files for the harness, in the format the daemon's major expects.

containerd 1.x reads version 2 files; 2.0-2.3 read version 3 and 2.4 version 4, migrating older
files in memory with a warning at every start. The harness writes the native format of the
containerd on PATH (tests/cluster/versions.py), so no daemon ever runs a migrated config.
Version 4 moved the daemon's own endpoints (gRPC, ttrpc, debug, metrics) from top-level tables
into server plugins; the CRI sections are the same in 3 and 4.

In 2.x the CRI plugin is split in three: `io.containerd.cri.v1.images` (snapshotter,
`discard_unpacked_layers`, the sandbox image, registry hosts), `io.containerd.cri.v1.runtime`
(runtimes, CNI, OOM handling) and `io.containerd.grpc.v1.cri` (the CRI server and its
streaming endpoint).
"""

from __future__ import annotations

from pathlib import Path

from tests.cluster import versions

# Off in a daemon without CRI (the pod sandbox controller depends on the CRI runtime).
NO_CRI_V2 = (
    "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri",
    "io.containerd.podsandbox.controller.v1.podsandbox",
)  # fmt: skip

_DAEMON = """root = "{d}/root"
state = "{d}/state"
"""

# Unix socket paths are limited to 104 bytes, and pytest's tmp dirs are long: the ttrpc socket
# gets a short name of its own. Where the daemon's own endpoints are configured: top-level
# tables up to version 3, server plugins from version 4 (a version-4 file with a top-level
# [grpc] table is silently ignored and the daemon binds /run/containerd/containerd.sock).
_SERVERS_UP_TO_V3 = """
[grpc]
  address = "{sock}"

[ttrpc]
  address = "{d}/ttrpc.sock"

[debug]
  address = "{d}/debug.sock"
  level = "info"

[metrics]
  address = ""
"""

_SERVERS_V4 = """
[debug]
  level = "info"

[plugins.'io.containerd.server.v1.grpc']
  address = "{sock}"

[plugins.'io.containerd.server.v1.ttrpc']
  address = "{d}/ttrpc.sock"

[plugins.'io.containerd.server.v1.debug']
  address = "{d}/debug.sock"

[plugins.'io.containerd.server.v1.metrics']
  address = ""
"""


def _daemon(d: Path, version: int) -> str:
    servers = _SERVERS_V4 if version >= 4 else _SERVERS_UP_TO_V3
    return (_DAEMON + servers).format(d=d, sock=d / "containerd.sock")


_CRI_V1 = """
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # no CAP_SYS_RESOURCE here: never ask for an oom_score_adj below containerd's own
  restrict_oom_score_adj = true
  # pods' network namespaces under our state dir, not /run/netns: teardown unmounts them
  netns_mounts_under_state_dir = true
  max_concurrent_downloads = 3
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = {discard}
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"""

_CRI_V2 = """
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  discard_unpacked_layers = {discard}
  max_concurrent_downloads = 3
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{d}/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  disable_apparmor = true
  # no CAP_SYS_RESOURCE here: never ask for an oom_score_adj below containerd's own
  restrict_oom_score_adj = true
  # pods' network namespaces under our state dir, not /run/netns: teardown unmounts them
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def plain(d: Path, *, config_version: int | None = None) -> str:
    """A daemon without CRI: content, images, leases, snapshots, introspection only."""
    version = config_version or versions.containerd_config_version()
    if version >= 3:
        disabled = ", ".join(f'"{p}"' for p in NO_CRI_V2)
        return f"version = {version}\ndisabled_plugins = [{disabled}]\n" + _daemon(d, version)
    return 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' + _daemon(d, version)


def cri(
    d: Path, *, pause: str, cni_bin: str, discard_unpacked_layers: bool = False,
    config_version: int | None = None,
) -> str:
    """A kubelet node's daemon: CRI on, overlayfs, runc without systemd cgroups."""
    version = config_version or versions.containerd_config_version()
    fields = {
        "d": d, "pause": pause, "cni_bin": cni_bin,
        "discard": "true" if discard_unpacked_layers else "false",
    }  # fmt: skip
    if version >= 3:
        return f"version = {version}\n" + _daemon(d, version) + _CRI_V2.format(**fields)
    return "version = 2\noom_score = 0\n" + _daemon(d, version) + _CRI_V1.format(**fields)
