"""docs/architecture.md's module table, drawn from the code: every module of `tote_core/` and
`plugins/` (generated protobuf code left out) with the first line of its docstring.

`python -m tools.module_table` rewrites the table in place; `tests/unit/test_module_table.py` fails
when the page and the code disagree, so the table cannot drift from the modules it lists.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
MAX_LINE = 140  # characters of a docstring's first paragraph shown
HEADER = "| module | what it is for |\n|---|---|\n"


def modules() -> list[Path]:
    """Core first, then the plugins; an empty package marker (`__init__.py` without a
    docstring) says nothing and is left out."""
    out: list[Path] = []
    for top in ("tote_core", "plugins"):
        for path in sorted((REPO / top).rglob("*.py")):
            if "_gen" in path.parts or "__pycache__" in path.parts:
                continue
            if path.name == "__init__.py" and not first_line(path):
                continue
            out.append(path)
    return out


def first_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    if not doc:
        return ""
    line = doc.strip().split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE].rsplit(" ", 1)[0] + " …"
    return line


def table() -> str:
    rows = [f"| `{p.relative_to(REPO)}` | {first_line(p)} |\n" for p in modules()]
    return HEADER + "".join(rows)


def current(text: str) -> tuple[int, int]:
    """Where the table stands in the page: [start, end) character offsets."""
    start = text.index(HEADER)
    end = start + len(HEADER)
    while text.startswith("| `", end):
        end = text.index("\n", end) + 1
    return start, end


def main() -> int:
    text = DOC.read_text()
    start, end = current(text)
    DOC.write_text(text[:start] + table() + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
