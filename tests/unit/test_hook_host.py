"""Plugin host: async implementations awaited, firstresult walked, failures isolated."""

from __future__ import annotations

import pytest

from tote_core import metrics
from tote_core.errors import RetryLater
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Incident, NodeInfo, TransferProgress, TransferRequest

INCIDENT = Incident(
    namespace="ns", pod_name="p", pod_uid="u", container="c", init_container=False,
    image_ref="docker.io/library/x:1", digest=None, node_name="n", kind="pull", message="",
)


class AsyncNone:
    @hookimpl
    async def select_source(self, incident: Incident, candidates: list[NodeInfo]) -> None:
        return None


class AsyncPick:
    @hookimpl
    async def select_source(self, incident: Incident, candidates: list[NodeInfo]) -> list[str]:
        return ["b"]


class Broken:
    @hookimpl
    def on_detected(self, incident: Incident) -> None:
        raise RuntimeError("plugin bug")

    @hookimpl
    async def select_source(self, incident: Incident, candidates: list[NodeInfo]) -> list[str]:
        raise ValueError("boom")


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Incident] = []

    @hookimpl
    async def on_detected(self, incident: Incident) -> None:
        self.seen.append(incident)


async def test_firstresult_awaits_and_skips_none_and_failures() -> None:
    host = PluginHost()
    host.register(AsyncPick(), "pick")
    host.register(AsyncNone(), "none")  # registered last → called first, returns None
    host.register(Broken(), "broken")  # called before both, raises → isolated
    before = metrics.PLUGIN_FAILURES.labels("broken", "select_source")._value.get()
    order = await host.select_source(INCIDENT, [NodeInfo(name="a", ready=True)])
    assert order == ["b"]
    after = metrics.PLUGIN_FAILURES.labels("broken", "select_source")._value.get()
    assert after == before + 1


async def test_broadcast_isolates_failures() -> None:
    host = PluginHost()
    rec = Recorder()
    host.register(rec, "rec")
    host.register(Broken(), "broken")
    await host.on_detected(INCIDENT)
    assert rec.seen == [INCIDENT]


async def test_transfer_errors_propagate_for_control_flow() -> None:
    class Flaky:
        @hookimpl
        async def transfer(self, request: TransferRequest, progress: object) -> None:
            raise RetryLater("source down", reason="source_unavailable")

    host = PluginHost()
    host.register(Flaky(), "flaky")
    req = TransferRequest(image_ref="x", digest="d", source_node="a", target_node="b")

    async def progress(p: TransferProgress) -> None:
        return None

    with pytest.raises(RetryLater):
        await host.transfer(req, progress)


def test_entry_points_and_disable_list() -> None:
    infos = {p.name: p for p in PluginHost().load(disabled=["inheritance"])}
    assert infos["inheritance"].enabled is False and infos["inheritance"].builtin
    loaded = {p.name: p for p in PluginHost().load()}
    assert loaded["inheritance"].enabled and "opt_in" in loaded["inheritance"].hooks


