"""How `tote status` shows the board to people: a rich table, a pure function of the items.

Transfers get a progress bar from `bytesTransferred / bytesTotal`; incidents show the last
outcome detection reported (the event reason). `--json` bypasses this entirely.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tote_core import killswitch
from tote_core.salvage.planner import human_bytes
from tote_core.structs.status import FINISHED_PHASES, Hello, Item, Switch

_PHASE_STYLE = {
    "Completed": "green", "Failed": "red", "Transferring": "cyan", "Pending": "yellow",
    "ImageSalvaged": "green", "ImageSalvageFailed": "red", "ImageNotActionable": "red",
    "ImageResolvedUncached": "red", "ImageCorrupt": "yellow", "ImageSalvageable": "cyan",
}

# Only these columns fold on a narrow terminal; short values (phase, nodes, names) stay whole.
_FOLDING = frozenset({"IMAGE", "PROGRESS", "ERROR"})


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12] if digest else "-"


def _progress(item: Item) -> RenderableType:
    if item.bytes_total <= 0:
        return Text(item.message or "-")
    done = min(item.bytes_transferred, item.bytes_total)
    label = Text(f" {human_bytes(done)}/{human_bytes(item.bytes_total)} "
                 f"({100 * done // item.bytes_total}%)")
    bar = ProgressBar(total=item.bytes_total, completed=done, width=24,
                      finished_style="green" if item.phase == "Completed" else "bar.finished")
    grid = Table.grid()
    grid.add_row(bar, label)
    return grid


def transfers_table(items: Iterable[Item]) -> Table:
    table = Table(title="Transfers", title_justify="left", expand=False)
    for col in ("NAMESPACE", "POD", "IMAGE", "DIGEST", "SOURCE → TARGET", "PHASE",
                "PROGRESS", "ERROR"):
        table.add_column(col, overflow="fold", no_wrap=col not in _FOLDING)
    for it in sorted(items, key=lambda i: (i.phase in FINISHED_PHASES, i.started_at, i.key)):
        table.add_row(
            it.namespace, it.pod, it.image, _short(it.digest),
            f"{it.source or '?'} → {it.target or '?'}",
            Text(it.phase + (f" (retry {it.retry_count})" if it.retry_count else ""),
                 style=_PHASE_STYLE.get(it.phase, "")),
            _progress(it), Text(it.error[:120], style="red"))
    return table


def incidents_table(items: Iterable[Item]) -> Table:
    table = Table(title="Incidents", title_justify="left", expand=False)
    for col in ("NAMESPACE", "POD", "NODE", "IMAGE", "DIGEST", "OUTCOME", "SINCE"):
        table.add_column(col, overflow="fold", no_wrap=col not in _FOLDING)
    for it in sorted(items, key=lambda i: (i.started_at, i.key)):
        table.add_row(it.namespace, it.pod, it.target or "-", it.image, _short(it.digest),
                      Text(it.phase, style=_PHASE_STYLE.get(it.phase, "")), it.started_at)
    return table


def switch_line(switch: Switch) -> Text:
    """The kill switch: a bold red banner while salvage is off, a quiet line while on."""
    line = killswitch.describe(switch)
    if switch.enabled:
        return Text(line, style="green")
    return Text(line, style="bold white on red")


def render(hello: Hello | None, items: Iterable[Item], *, switch: Switch | None = None
           ) -> RenderableType:
    """The whole screen for the current set of items (and the kill switch, first)."""
    items = list(items)
    transfers = [i for i in items if i.kind == "transfer"]
    incidents = [i for i in items if i.kind == "incident"]
    head = Text(f"controller {hello.controller} (tote {hello.version})" if hello else "",
                style="dim")
    parts: list[RenderableType] = [head]
    if switch is not None:
        parts.append(switch_line(switch))
    parts.append(transfers_table(transfers) if transfers else Text("No transfers."))
    parts.append(incidents_table(incidents) if incidents else Text("No incidents."))
    return Group(*parts)
