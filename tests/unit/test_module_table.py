"""docs/architecture.md lists every module with its docstring's first line, as the code has
it now (regenerate with `python -m tools.module_table`)."""

from __future__ import annotations

from tools import module_table


def test_the_architecture_pages_module_table_matches_the_code() -> None:
    text = module_table.DOC.read_text()
    start, end = module_table.current(text)
    assert text[start:end] == module_table.table(), (
        "docs/architecture.md's module table is stale: run `python -m tools.module_table`")
