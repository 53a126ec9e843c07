"""The rich console behind the CLI's people views (`tote status`, `tote doctor`).

At a terminal rich fits a table to the terminal's width. Piped or redirected, rich would
assume 80 columns and fold every cell — `Completed` printed as `Complet` / `ed`, so `grep`
misses it. There the views are printed at their natural width instead: tables are not
expanded, so a line is only as long as its content. Scripts should still use `--json`.
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console

PIPED_WIDTH = 1000  # wide enough that no column of ours folds; lines stay content-long


def console(out: TextIO) -> Console:
    is_tty = getattr(out, "isatty", None)
    piped = not (callable(is_tty) and is_tty())
    return Console(file=out, width=PIPED_WIDTH if piped else None)
