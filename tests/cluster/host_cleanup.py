"""Leaving the host as it was: the cgroup root a kubelet node's pods run under, processes
still referencing a node's directory, mounts under it and links into it (found by what they
reference and ended by PID, never by name)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")



# --------------------------------------------------------------------------- cgroups


def cgroup_subsystem_dirs() -> list[Path]:
    """The cgroup hierarchies kubelet uses (v1 controller mounts, or the v2 unified one)."""
    dirs: list[Path] = []
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return dirs
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("cgroup", "cgroup2"):
            dirs.append(Path(parts[1]))  # v1: one per controller set; v2: the unified one
    return dirs


def make_cgroup_root(rel: str) -> list[Path]:
    made = []
    for base in cgroup_subsystem_dirs():
        p = base / rel.lstrip("/")
        if not p.exists():
            p.mkdir()
            made.append(p)
        if base.name == "cpuset" or "cpuset" in base.name.split(","):
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (p / f).exists() and not (p / f).read_text().strip():
                    (p / f).write_text((base / f).read_text())
    return made


def remove_cgroup_tree(root: Path) -> list[str]:
    """rmdir a cgroup subtree bottom-up; returns dirs that could not be removed."""
    left: list[str] = []
    if not root.exists():
        return left
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError as exc:
            left.append(f"{dirpath}: {exc.strerror}")
    return left


# --------------------------------------------------------------------------- processes/mounts


def pids_referencing(needle: str) -> list[int]:
    """PIDs whose command line mentions `needle` (a path unique to this node's tmp dir)."""
    found = []
    me = os.getpid()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == me:
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            found.append(int(p.name))
    return found


def descendants(pids: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(p.name))
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            out.append(c)
            todo.append(c)
    return out


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    out: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        mp = line.split()[4].replace("\\040", " ")
        if mp.startswith(prefix) or mp == prefix[:-1]:
            out.append(mp)
    return out


def unmount_all_under(root: Path) -> list[str]:
    """Unmount everything mounted under `root`, deepest first; returns what stayed mounted."""
    for _ in range(3):
        mps = sorted(set(mounts_under(root)), key=len, reverse=True)
        if not mps:
            return []
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
    return mounts_under(root)




def remove_links_into(directory: Path, target_root: Path) -> list[str]:
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    prefix = str(target_root.resolve()) + "/"
    for link in directory.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(prefix):
            link.unlink(missing_ok=True)
            removed.append(link.name)
    return removed


def describe_pid(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmd = "?"
    return f"{pid}: {cmd[:200]}"
