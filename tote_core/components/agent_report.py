"""`GET /agents` on the controller's health port: every node's agent as this replica reaches
it — the rows `tote doctor` shows.

Doctor asks the controller instead of dialling agents itself because the controller is the
one that must reach them: it holds the mTLS identity, and it stands where the chart's
NetworkPolicies let agent traffic through (doctor on an operator's laptop has neither, nor
usually a route to pod IPs). One answer serves every caller for `TTL` seconds, so nobody can
make the controller dial every agent in a loop.
"""

from __future__ import annotations

import msgspec
import trio

from tote_core import httpserver
from tote_core.doctor import checks
from tote_core.hooks.host import PluginHost
from tote_core.kube.client import KubeClient
from tote_core.settings import ControllerSettings

TTL = 5.0


class AgentReport:
    def __init__(self, kube: KubeClient, host: PluginHost, settings: ControllerSettings):
        self._kube, self._host, self._settings = kube, host, settings
        self._lock = trio.Lock()
        self._answer: tuple[float, bytes] | None = None

    async def serve(self) -> httpserver.Response:
        async with self._lock:
            now = trio.current_time()
            if self._answer is None or now - self._answer[0] > TTL:
                target = checks.Target(namespace=self._settings.namespace,
                                       settings=self._settings)
                rows = await checks.agents(self._kube, self._host, target)
                self._answer = (now, msgspec.json.encode(rows) + b"\n")
            return 200, "application/json", self._answer[1]
