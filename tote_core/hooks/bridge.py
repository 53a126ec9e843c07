"""How pluggy's synchronous calls reach async hook implementations, and how one plugin's
failure is kept from the others (see `host.py` for why the host needs both).

A pluggy call runs in a greenlet whose parent is the calling trio task. Each implementation
is registered behind a bridge: when it returns an awaitable, the bridge switches to the
trio task with "await this", and the task switches the result (or exception) back. Bridges
of isolated hooks turn an implementation's exception into None (reported through `failed`);
a new-style wrapper that raises is skipped and the result passes through unchanged.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import greenlet

Failed = Callable[[str, str, BaseException], None]


class _Await:
    """Handed from an implementation's bridge to the trio side: "await this for me"."""

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable


class _HookGreenlet(greenlet.greenlet):  # type: ignore[misc]
    """The greenlet one pluggy call runs in; its parent is the calling trio task."""


def _await(awaitable: Awaitable[Any]) -> Any:
    current = greenlet.getcurrent()
    if not isinstance(current, _HookGreenlet):
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # no "never awaited" warning on top of the real error
        raise RuntimeError("an async hook implementation was called outside the plugin host")
    return current.parent.switch(_Await(awaitable))


def bridge(plugin: str, hook: str, function: Callable[..., Any], opts: Any, *,
           isolate: bool, failed: Failed) -> Callable[..., Any]:
    """What pluggy registers for one hook implementation."""
    if opts.get("hookwrapper"):
        return function  # old-style: pluggy's Result protocol, run as is
    if opts.get("wrapper"):
        return _isolated_wrapper(plugin, hook, function, failed) if isolate else function

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = function(*args, **kwargs)
            if inspect.isawaitable(result):
                result = _await(result)
            return result
        except Exception as exc:
            if not isolate:
                raise
            failed(plugin, hook, exc)
            return None

    return call


def _isolated_wrapper(
    plugin: str, hook: str, function: Callable[..., Generator[Any, Any, Any]], failed: Failed,
) -> Callable[..., Generator[Any, Any, Any]]:
    """A new-style wrapper that raises is skipped: the result passes through unchanged.

    An exception coming from inside (thrown into the wrapper by pluggy) is the wrapper's
    to handle, exactly as pluggy would do it.
    """

    @functools.wraps(function)
    def shim(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        try:
            gen = function(*args, **kwargs)
            next(gen)
        except Exception as exc:  # raised before yielding, or never yielded
            failed(plugin, hook, exc)
            return (yield)
        try:
            result = yield
        except BaseException as inner:
            try:
                gen.throw(inner)
            except StopIteration as stop:
                return stop.value
            raise RuntimeError(f"wrapper {plugin}.{hook} yielded twice") from inner
        try:
            gen.send(result)
        except StopIteration as stop:
            return stop.value
        except Exception as exc:
            failed(plugin, hook, exc)
            return result
        gen.close()
        failed(plugin, hook, RuntimeError(f"wrapper {plugin}.{hook} yielded twice"))
        return result

    return shim


async def drive(caller: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run one pluggy call, awaiting in this task every awaitable an implementation hands
    over (cancellation and deadlines are this task's; pluggy's wrappers see them)."""
    glet = _HookGreenlet(functools.partial(caller, **kwargs))
    glet.gr_context = contextvars.copy_context()
    step = glet.switch()
    while not glet.dead:
        assert isinstance(step, _Await)
        try:
            value = await step.awaitable
        except BaseException as exc:  # Cancelled too
            step = glet.throw(exc)
        else:
            step = glet.switch(value)
    return step
