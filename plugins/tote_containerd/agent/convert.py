"""protobuf ↔ msgspec for the agent API (used only by the bridge modules, client and server).

The `api` structs carry their proto messages' field names, so one generic pair converts
every message: a struct becomes the message's keyword arguments (nested structs as dicts,
which protobuf accepts for message fields), and a message's fields — nested, repeated and
map fields included — become the struct through `msgspec.convert`. A struct field the proto
lacks would fail loudly here rather than be dropped; the unit tests compare the two.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


def to_pb(value: msgspec.Struct, message: Any) -> Any:
    """`value` as a `message` (a generated message class)."""
    return message(**msgspec.to_builtins(value))


def from_pb(message: Any, struct: type[S]) -> S:
    """The fields of `message` that `struct` declares, as a `struct`."""
    return msgspec.convert(plain(message), struct)


def plain(message: Any) -> dict[str, Any]:
    """A message as builtins: dicts for messages and maps, lists for repeated fields."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        kind = field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            out[field.name] = dict(value)
        elif field.is_repeated:
            out[field.name] = [plain(v) for v in value] if kind is not None else list(value)
        else:
            out[field.name] = plain(value) if kind is not None else value
    return out
