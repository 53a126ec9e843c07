"""Start, track and stop test daemons by PID.

Every process a test starts goes through a `ProcessGroup`: it records the PID, sends output to
a log file (attached to failures by the fixtures), and stops exactly the processes it started
(SIGTERM to the PID's own process group, then SIGKILL after a grace period). Nothing is ever
killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Proc:
    """One tracked daemon."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, max_bytes: int = 8000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode(errors="replace")

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process (and its own process group), wait, escalate to SIGKILL."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL at once (for crash tests)."""
        self.stop(grace=0.1, sig=signal.SIGKILL)


@dataclass
class ProcessGroup:
    """The set of daemons one fixture started; `stop_all` ends them in reverse order."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # own process group: stop() reaches its children too
            )
        finally:
            log.close()
        proc = Proc(name=name, argv=list(argv), log_path=log_path, popen=popen)
        self.procs.append(proc)
        return proc

    def stop_all(self, grace: float = 10.0) -> None:
        for proc in reversed(self.procs):
            proc.stop(grace=grace)

    def logs(self) -> dict[str, str]:
        return {p.name: p.log_tail() for p in self.procs}


def step_seconds(steps: Sequence[str], marks: Sequence[float]) -> dict[str, float]:
    """How long each named step of a start-up took, from the monotonic times around them
    (`marks` has one more entry than `steps`), plus "total"; rounded to 10 ms."""
    if len(marks) != len(steps) + 1:
        raise ValueError(f"{len(steps)} steps need {len(steps) + 1} marks, got {len(marks)}")
    out = {s: round(marks[i + 1] - marks[i], 2) for i, s in enumerate(steps)}
    out["total"] = round(marks[-1] - marks[0], 2)
    return out


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    proc: Proc | None = None,
) -> None:
    """Poll `predicate` until true; fail with `what` (and the process log) on timeout/exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n"
                + proc.log_tail()
            )
        time.sleep(interval)
    tail = f"\n{proc.name} log:\n{proc.log_tail()}" if proc else ""
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{tail}")


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on `host` (loopback only)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds `pid` has used so far, from /proc/PID/stat; with
    `children`, plus those of its children it has reaped. Raises OSError once `pid` is
    gone (a silent 0 would read as "used nothing")."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")
