"""Run `tote controller` as a PID-tracked process with the restricted RBAC identity.

`ControllerProcess` is one replica; `Controllers` is the factory tests get from the
`controllers` fixture (tests/conftest.py): what varies between the tests' controllers is only
their settings (flags and environment), so every test starts them the same way, each with a
lease of its own unless it names one, and all are stopped at teardown.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import prom
from tests.cluster.controlplane import ControlPlane
from tests.cluster.procs import Proc, ProcessGroup, free_port, wait_until


@dataclass
class ControllerProcess:
    """One controller replica. `logs()` is attached to failing tests by conftest."""

    cp: ControlPlane
    log_dir: Path
    identity: str
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    status_port: int = 0  # the WebSocket status feed (`tote status --url`)
    procs: ProcessGroup | None = None
    proc: Proc | None = None

    def start(self, *, wait_ready: bool = True) -> ControllerProcess:
        self.port = free_port()
        self.status_port = free_port()
        self.procs = self.procs or ProcessGroup(self.log_dir)
        argv = [
            sys.executable, "-m", "tote_core.cli", "controller",
            f"--kubeconfig={self.cp.controller_kubeconfig}",
            f"--namespace={self.cp.namespace}",
            f"--identity={self.identity}",
            f"--metrics-address=127.0.0.1:{self.port}",
            f"--health-address=127.0.0.1:{self.port}",
            f"--status-address=127.0.0.1:{self.status_port}",
            "--log-level=debug",
            # The controller refuses to start with neither mTLS nor --insecure.
            *([] if any(a.startswith("--tls-") for a in self.extra_args) else ["--insecure"]),
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, **self.env}
        self.proc = self.procs.start(f"controller-{self.identity}", argv, env=env)
        if wait_ready:
            wait_until(self.ready, timeout=60, what=f"controller {self.identity} ready",
                       proc=self.proc)
        return self

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    @property
    def status_url(self) -> str:
        return f"ws://127.0.0.1:{self.status_port}/status"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def readyz(self) -> dict[str, Any]:
        status, body = self._get("/readyz")
        return json.loads(body) if status in (200, 503) and body else {}

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def leading(self) -> bool:
        return bool(self.readyz().get("leader"))

    def metrics(self) -> dict[str, float]:
        """Sample name (with labels) → value, from /metrics."""
        _, body = self._get("/metrics")
        return prom.parse(body.decode())

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.stop_all()

    def logs(self) -> dict[str, str]:
        return self.procs.logs() if self.procs else {}


@dataclass
class Controllers:
    """The controller factory: `start(identity, *flags)` runs one more replica against `cp`
    with `common_args` first (e.g. a salvage environment's mTLS identity and agent
    endpoints) and the test's flags after them; `stop_all()` (the fixture's teardown) stops
    every one; `logs()` gives a failing test every replica's log."""

    cp: ControlPlane
    workdir: Path
    common_args: Sequence[str] = ()
    started: list[ControllerProcess] = field(default_factory=list)

    def start(self, identity: str, *flags: str, lease: str | None = None,
              env: dict[str, str] | None = None, wait_ready: bool = True,
              wait_lead: bool = False, cp: ControlPlane | None = None) -> ControllerProcess:
        """One replica named `identity` (its log is `controller-<identity>`). `lease`: the
        Lease it elects through; None gives it one of its own, so tests on the session's
        control plane never share one by accident. `wait_ready=False` returns as soon as the
        process runs (a start that must fail); `wait_lead` waits until it leads. `cp`: another
        view of the control plane (another controller identity) than the factory's."""
        lease = lease or f"{identity}-{uuid.uuid4().hex[:6]}"
        ctl = ControllerProcess(
            cp or self.cp, self.workdir / f"{identity}-{len(self.started)}", identity=identity,
            extra_args=[f"--lease-name={lease}", *self.common_args, *flags], env=env or {},
        )
        self.started.append(ctl)
        ctl.start(wait_ready=wait_ready)
        if wait_lead:
            wait_until(ctl.leading, timeout=30, what=f"{identity} leads", proc=ctl.proc)
        return ctl

    def stop_all(self) -> None:
        for ctl in self.started:
            ctl.stop()

    def logs(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ctl in self.started:
            out.update(ctl.logs())
        return out
