"""tote's pytest plugin for plugin authors (entry point `pytest11`: `tote`), loaded into
every pytest run where tote is installed.

Fixtures (async ones need pytest-trio: `trio_mode = true`, or `@pytest.mark.trio`):

- `tote_cluster`: a `FakeCluster`, the fake Kubernetes API server over plain dicts that the
  real `KubeClient` and informers talk to.
- `tote_agents`: `ScriptedAgents`, a `transfer` plugin whose outcomes the test scripts call
  by call (success, `RetryLater`, `PermanentError`, hang) and which answers `find_image`,
  `resolve_tag` and `remove_image` from what the test says the nodes hold.
- `tote_harness`: an async factory; `await tote_harness(plugins={"name": obj}, ...)` gives a
  `Harness`: a `PluginHost` with those plugins registered (and optionally the installed
  ones), a `PluginContext` over `tote_cluster` with synced caches and the plugins'
  settings, `configure` called.
- Time: pytest-trio's own `mock_clock` and `autojump_clock` (a `MockClock`), used as is.

Why this module imports nothing of tote at import time: pytest imports it in every run
(tote's own included, and any project that merely has tote installed), so it stays as cheap
as a module of fixture definitions; each fixture imports what it builds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import trio

    from tote_core.testing.fakekube import FakeCluster
    from tote_core.testing.harness import Harness
    from tote_core.testing.scripted import ScriptedAgents

HarnessFactory = Callable[..., Awaitable["Harness"]]


@pytest.fixture
def tote_cluster() -> FakeCluster:
    """A fresh fake Kubernetes API server (empty: add namespaces, nodes and pods with
    `tote_core.testing.objects`)."""
    from tote_core.testing.fakekube import FakeCluster

    return FakeCluster()


@pytest.fixture
def tote_agents() -> ScriptedAgents:
    """A scripted transfer/inventory plugin; register it with `tote_harness(plugins=
    {"agents": tote_agents})`."""
    from tote_core.testing.scripted import ScriptedAgents

    return ScriptedAgents()


@pytest.fixture
async def tote_harness(nursery: trio.Nursery, tote_cluster: FakeCluster
                       ) -> AsyncIterator[HarnessFactory]:
    """`await tote_harness(**options)` → a configured `Harness` over `tote_cluster`.

    Options (see `tote_core.testing.harness.open_harness`): `plugins` (name → object),
    `entry_points` (True or names of installed plugins to load too), `settings` (core's),
    `plugin_settings` (name → Struct or mapping of fields), `configure` (default True),
    `services` (start the plugins' services). Caches and services run until the test ends.
    """
    from tote_core.testing.harness import start_harness

    opened: list[Harness] = []

    async def make(**options: Any) -> Harness:
        options.setdefault("cluster", tote_cluster)
        harness = await start_harness(nursery, **options)
        opened.append(harness)
        return harness

    yield make
    nursery.cancel_scope.cancel()
    for harness in opened:
        await harness.kube.aclose()
