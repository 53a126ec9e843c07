"""Nothing half-visible: a watcher that polls a node's containerd while a fault-matrix row
runs and notes every moment the image is listed before all its blobs are in the content
store (tests/integration/salvage/test_fault_matrix.py, tests/e2e/test_network_faults.py)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class CtrNode(Protocol):
    def ctr(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]: ...


@dataclass
class Watch:
    """`node()` is asked anew on every poll: a row may restart the node's containerd."""

    node: Callable[[], CtrNode]
    digest: str
    blobs: set[str]
    seen_listed: int = 0
    half_visible: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            node = self.node()
            names = node.ctr("images", "ls", "-q", check=False, timeout=20)
            if names.returncode != 0 or self.digest not in names.stdout:
                continue
            content = node.ctr("content", "ls", "-q", check=False, timeout=20)
            if content.returncode != 0:
                continue
            self.seen_listed += 1
            missing = self.blobs - set(content.stdout.split())
            if missing:
                self.half_visible.append(f"listed with {len(missing)} blob(s) missing")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
