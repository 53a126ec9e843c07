"""The fault matrix's results, collected by its tests and printed once at the end of the run
(`pytest_terminal_summary` in tests/conftest.py), so a CI log shows fault → outcome
as one table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    fault: str
    outcome: str
    recovered_s: float  # fault injected → record Completed (or the final outcome)
    attempts: int  # transfers the controller started for this salvage


ROWS: list[Row] = []


def markdown() -> str:
    lines = ["| fault | outcome | fault → outcome | transfers started |",
             "|---|---|---|---|"]
    lines += [f"| {r.fault} | {r.outcome} | {r.recovered_s:.1f} s | {r.attempts} |"
              for r in ROWS]
    return "\n".join(lines)
