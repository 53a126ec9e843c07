"""Plugin host: pluggy calls (order, tryfirst, wrappers, first-result); the host awaits and
isolates. Real host, real specs, plugins defined inline (as tox's own plugin tests do)."""

from __future__ import annotations

import logging
from collections.abc import Generator

import pytest
import trio
import trio.lowlevel

from tote_core import metrics
from tote_core.errors import ConfigError, RetryLater
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import (
    Incident,
    NodeInfo,
    Notification,
    TransferProgress,
    TransferRequest,
)

INCIDENT = Incident(
    namespace="ns", pod_name="p", pod_uid="u", container="c", init_container=False,
    image_ref="docker.io/library/x:1", digest=None, node_name="n", kind="pull", message="",
)
CANDIDATES = [NodeInfo(name="a", ready=True), NodeInfo(name="b", ready=True)]
TARGET = NodeInfo(name="n", ready=True)


def failures(plugin: str, hook: str) -> float:
    return metrics.PLUGIN_FAILURES.labels(plugin, hook)._value.get()  # type: ignore[no-any-return]


class AsyncPick:
    """An async first-result implementation that needs a checkpoint to answer."""

    def __init__(self, answer: list[str]) -> None:
        self.answer = answer

    @hookimpl
    async def select_source(self, candidates: list[NodeInfo]) -> list[str]:
        await trio.lowlevel.checkpoint()
        return list(self.answer)


class AsyncPass:
    @hookimpl
    async def select_source(self) -> None:
        await trio.lowlevel.checkpoint()
        return None


class Reverse:
    """A third-party style wrapper: sees the awaited answer and replaces it."""

    def __init__(self) -> None:
        self.saw: list[object] = []

    @hookimpl(wrapper=True)
    def select_source(self) -> Generator[None, list[str] | None, list[str] | None]:
        order = yield
        self.saw.append(order)
        return list(reversed(order)) if order is not None else None


class Broken:
    @hookimpl
    def on_detected(self, incident: Incident) -> None:
        raise RuntimeError("plugin bug")

    @hookimpl
    async def select_source(self, incident: Incident) -> list[str]:
        await trio.lowlevel.checkpoint()
        raise ValueError("boom")


class BrokenWrapper:
    @hookimpl(wrapper=True)
    def select_source(self) -> Generator[None, list[str] | None, list[str] | None]:
        yield
        raise KeyError("wrapper bug")


class Recorder:
    def __init__(self, tag: str, calls: list[str]) -> None:
        self.tag, self.calls = tag, calls

    @hookimpl
    async def on_detected(self, incident: Incident) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append(self.tag)


class First(Recorder):
    @hookimpl(tryfirst=True)
    def on_detected(self, incident: Incident) -> None:  # type: ignore[override]
        self.calls.append(self.tag)


async def test_wrapper_around_async_firstresult_sees_the_awaited_answer() -> None:
    host = PluginHost()
    wrapper = Reverse()
    host.register(AsyncPick(["a", "b"]), "pick")
    host.register(wrapper, "third-party")
    assert await host.select_source(INCIDENT, CANDIDATES, TARGET) == ["b", "a"]
    assert wrapper.saw == [["a", "b"]]  # never a coroutine, never [None]


async def test_firstresult_skips_an_awaited_none_and_isolates_a_raiser(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = PluginHost()
    host.register(AsyncPick(["b"]), "pick")
    host.register(AsyncPass(), "pass")  # registered later → called first, awaits to None
    host.register(Broken(), "broken")  # called before both, raises → logged, counted, skipped
    before = failures("broken", "select_source")
    with caplog.at_level(logging.ERROR, logger="tote.plugins"):
        assert await host.select_source(INCIDENT, CANDIDATES, TARGET) == ["b"]
    assert failures("broken", "select_source") == before + 1
    record = next(r for r in caplog.records if "broken" in r.getMessage())
    assert record.levelno == logging.ERROR and record.exc_info is not None  # traceback


async def test_raising_wrapper_is_skipped_and_the_answer_passes_through() -> None:
    host = PluginHost()
    host.register(AsyncPick(["a", "b"]), "pick")
    host.register(BrokenWrapper(), "bad-wrapper")
    before = failures("bad-wrapper", "select_source")
    assert await host.select_source(INCIDENT, CANDIDATES, TARGET) == ["a", "b"]
    assert failures("bad-wrapper", "select_source") == before + 1


async def test_no_answer_is_none_so_core_orders() -> None:
    host = PluginHost()
    host.register(AsyncPass(), "pass")
    assert await host.select_source(INCIDENT, CANDIDATES, TARGET) is None
    assert await PluginHost().select_source(INCIDENT, CANDIDATES, TARGET) is None


async def test_broadcast_order_tryfirst_and_isolation() -> None:
    calls: list[str] = []
    host = PluginHost()
    host.register(First("first", calls), "first")  # registered first, but tryfirst
    host.register(Recorder("early", calls), "early")
    host.register(Broken(), "broken")
    host.register(Recorder("late", calls), "late")  # registered last → called before early
    await host.on_detected(INCIDENT)
    assert calls == ["first", "late", "early"]


async def test_transfer_errors_propagate_for_control_flow() -> None:
    class Flaky:
        @hookimpl
        async def transfer(self, request: TransferRequest) -> None:
            await trio.lowlevel.checkpoint()
            raise RetryLater("source down", reason="source_unavailable")

    host = PluginHost()
    host.register(Flaky(), "flaky")
    req = TransferRequest(image_ref="x", digest="d", source_node="a", target_node="b")

    async def progress(p: TransferProgress) -> None:
        return None

    with pytest.raises(RetryLater):
        await host.transfer(req, progress)


async def test_callers_deadline_cancels_an_async_implementation() -> None:
    class Slow:
        @hookimpl
        async def select_source(self) -> list[str]:
            await trio.sleep(3600)
            return ["never"]

    host = PluginHost()
    host.register(Slow(), "slow")
    with trio.move_on_after(0.05) as scope:
        await host.select_source(INCIDENT, CANDIDATES, TARGET)
    assert scope.cancelled_caught


def test_misspelled_hook_fails_loudly_naming_the_plugin() -> None:
    class Typo:
        @hookimpl
        def on_detcted(self, incident: Incident) -> None: ...

    host = PluginHost()
    with pytest.raises(ConfigError, match=r"typo-plugin: on_detcted is not a hook; did you "
                                          r"mean on_detected\?"):
        host.register(Typo(), "typo-plugin")
    assert host.pm.get_plugin("typo-plugin") is None  # nothing of it stays registered


def test_argument_no_spec_has_fails_loudly_naming_the_plugin() -> None:
    class WrongArgs:
        @hookimpl
        def notify(self, message: str) -> None: ...

    with pytest.raises(ConfigError, match="wrong-args"):
        PluginHost().register(WrongArgs(), "wrong-args")


async def test_notify_once_per_incident_and_type_with_timestamp() -> None:
    got: list[Notification] = []

    class Sink:
        @hookimpl
        def notify(self, notification: Notification) -> None:
            got.append(notification)

    host = PluginHost()
    host.register(Sink(), "sink")
    n = Notification(type="failed", pod_name="p", namespace="ns", image_ref="r", digest="d",
                     target_node="n", pod_uid="u1")
    assert await host.notify(n) is True
    assert await host.notify(n) is False  # a retry of the same incident: dropped
    assert await host.notify(Notification(**{**_fields(n), "type": "salvaged"})) is True
    assert await host.notify(Notification(**{**_fields(n), "pod_uid": "u2"})) is True
    assert [x.type for x in got] == ["failed", "salvaged", "failed"]
    assert got[0].timestamp.endswith("Z") and "T" in got[0].timestamp


def _fields(n: Notification) -> dict[str, object]:
    return {f: getattr(n, f) for f in n.__struct_fields__}


def test_entry_points_and_disable_list() -> None:
    host = PluginHost()
    infos = {p.name: p for p in host.load(disabled=["inheritance"])}
    assert infos["inheritance"].enabled is False and infos["inheritance"].builtin
    assert host.pm.is_blocked("inheritance") and host.plugin("inheritance") is None
    loaded_host = PluginHost()
    loaded = {p.name: p for p in loaded_host.load()}
    assert loaded["inheritance"].enabled and "opt_in" in loaded["inheritance"].hooks
    for name in ("webhook", "source-policy", "agent", "registry", "backup"):
        assert loaded[name].enabled and loaded[name].builtin, name
    assert {"notify", "settings_type"} <= set(loaded["webhook"].hooks)
    assert loaded["source-policy"].hooks == ("configure", "select_source", "settings_type")
    # Plugins are objects registered by the host, not modules.
    assert type(loaded_host.plugin("inheritance")).__name__ == "InheritancePlugin"


def test_an_entry_point_may_name_a_class_a_factory_or_an_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host builds classes and factories once; an object is registered as is."""
    from importlib import metadata

    import tote_core.hooks.discovery as discovery_module

    shared = AsyncPass()
    targets = {"cls": AsyncPass, "factory": lambda: AsyncPick(["a"]), "obj": shared}
    eps = metadata.EntryPoints(
        metadata.EntryPoint(name, f"{__name__}:{name}", "tote") for name in targets
    )
    monkeypatch.setattr(discovery_module.metadata, "entry_points", lambda group: eps)
    for name, target in targets.items():
        monkeypatch.setitem(globals(), name, target)
    host = PluginHost()
    assert all(p.enabled for p in host.load())
    assert isinstance(host.plugin("cls"), AsyncPass) and host.plugin("obj") is shared
    assert isinstance(host.plugin("factory"), AsyncPick)
