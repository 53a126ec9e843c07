"""Informer indices as pure bookkeeping: any sequence of upserts and deletes (watch events)
leaves the index equal to one computed from scratch over `items`.

Tried (hypothesis): random interleavings of add / update-into-another-value / delete over
a small key space (so keys collide and move between values), multi-valued index functions,
and an index added after objects are already present.
"""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tote_core.kube.informer import Informer


class Obj(msgspec.Struct, frozen=True):
    name: str
    labels: tuple[str, ...]


def _index_of(obj: Obj) -> tuple[str, ...]:
    return obj.labels


def _expected(items: dict[str, Obj]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key, obj in items.items():
        for value in obj.labels:
            out.setdefault(value, set()).add(key)
    return out


_ops = st.lists(
    st.tuples(
        st.sampled_from(["upsert", "delete"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.lists(st.sampled_from(["x", "y", "z"]), max_size=3, unique=True),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=2000)
@given(ops=_ops, late=st.booleans())
def test_index_matches_a_rebuild_after_any_event_sequence(
    ops: list[tuple[str, str, list[str]]], late: bool
) -> None:
    informer: Informer[Obj] = Informer(None, "/x", Obj, name="t")  # type: ignore[arg-type]
    if not late:
        informer.add_index("labels", _index_of)
    for i, (op, key, labels) in enumerate(ops):
        if late and i == len(ops) // 2:
            informer.add_index("labels", _index_of)
        old = informer.items.get(key)
        if op == "delete":
            informer.items.pop(key, None)
            informer._reindex(key, old, None)
        else:
            new = Obj(name=key, labels=tuple(labels))
            informer.items[key] = new
            informer._reindex(key, old, new)
    if late and len(ops) < 2:
        informer.add_index("labels", _index_of)
    assert informer._indices["labels"][1] == _expected(informer.items)
    for value, keys in _expected(informer.items).items():
        assert {o.name for o in informer.by_index("labels", value)} == keys
        assert sorted(informer.keys_by_index("labels", value)) == sorted(keys)
    assert informer.by_index("labels", "never") == []
    assert informer.keys_by_index("labels", "never") == []
