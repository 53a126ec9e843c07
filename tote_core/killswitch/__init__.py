"""The kill switch as runtime state no deployment tool owns: what its ConfigMap says.

The controller's `--enabled` flag (the chart's `enabled`) is the install-time default only.
At runtime the ConfigMap `--config-map` (default `tote-config`, the chart's
`<fullname>-config`) in the controller's namespace decides once it holds `data.enabled`;
`tote disable --reason` / `tote enable` (command.py) write it with the user's own
credentials and record who, when and why next to it. The chart never renders that
ConfigMap, so no `helm upgrade`, `helm rollback` or GitOps sync can write it back.

One reading of the ConfigMap serves the controller (detection, log, Events, the status
feed) and `tote doctor`, so they always agree:

- no ConfigMap or no `enabled` key: the flag decides (`source="flag"`);
- `enabled` in the one boolean parser's words: it decides (`source="configmap"`), with
  the recorded who/when/why when the recorded value matches (a later hand edit to the
  opposite value is shown as such, never with someone else's name);
- anything else: salvage stays OFF (`source="invalid"`) and `problem` says why.
"""

from __future__ import annotations

from collections.abc import Mapping

from tote_core.structs.status import Switch
from tote_core.values import parse_bool

KEY_ENABLED = "enabled"
KEY_BY = "changedBy"
KEY_AT = "changedAt"
KEY_REASON = "reason"
KEY_TO = "changedTo"  # the value the record describes (detects later hand edits)

# What the Events on the ConfigMap are called when the switch changes.
REASON_DISABLED = "SalvageDisabled"
REASON_ENABLED = "SalvageEnabled"

HAND_EDIT = "someone outside `tote disable`/`tote enable` (no record)"


def read(data: Mapping[str, str] | None, *, default: bool, namespace: str, name: str
         ) -> Switch:
    """The switch as ConfigMap `namespace/name` (its `data`, None when absent) and the
    controller's `--enabled` (`default`) make it."""
    where = f"{namespace}/{name}"
    if data is None or KEY_ENABLED not in data:
        return Switch(enabled=default, source="flag", config_map=where)
    raw = data[KEY_ENABLED]
    try:
        on = parse_bool(raw)
    except ValueError as exc:
        return Switch(enabled=False, source="invalid", config_map=where,
                      problem=(f"ConfigMap {where} key 'enabled': {exc}; salvage stays OFF "
                               "until it is fixed"))
    recorded = data.get(KEY_TO)
    try:
        matches = recorded is not None and parse_bool(recorded) == on
    except ValueError:
        matches = False
    if not matches:
        return Switch(enabled=on, source="configmap", config_map=where, changed_by=HAND_EDIT)
    return Switch(enabled=on, source="configmap", config_map=where,
                  changed_by=data.get(KEY_BY, ""), changed_at=data.get(KEY_AT, ""),
                  reason=data.get(KEY_REASON, ""))


def same_state(a: Switch | None, b: Switch | None) -> bool:
    """Whether `a` and `b` are the same switch position with the same record (what makes a
    log line and an Event: a change, not a re-read)."""
    return a == b


def describe(sw: Switch, *, shout: bool = True) -> str:
    """One line for people: `salvage DISABLED by alice since <time>: <reason>` (`shout`
    False: `disabled`, as the controller's log has always said it)."""
    off = "DISABLED" if shout else "disabled"
    if sw.source == "invalid":
        return f"salvage {off}: {sw.problem}"
    state = "enabled" if sw.enabled else off
    if sw.source == "flag":
        return (f"salvage {state} (the controller's --enabled={str(sw.enabled).lower()}, the "
                f"install-time default; no runtime value in ConfigMap {sw.config_map})")
    line = f"salvage {state} by {sw.changed_by or 'unknown'}"
    if sw.changed_at:
        line += f" since {sw.changed_at}"
    if sw.reason:
        line += f": {sw.reason}"
    return line


def event_of(sw: Switch) -> tuple[str, str] | None:
    """The (reason, note) of the Event a change to `sw` makes on the ConfigMap; None when
    there is nothing to event (the flag decides: no ConfigMap to regard; an invalid value
    has its own InvalidConfiguration warning)."""
    if sw.source != "configmap":
        return None
    note = f"by {sw.changed_by or 'unknown'} at {sw.changed_at or 'an unknown time'}"
    if sw.reason:
        note += f": {sw.reason}"
    return (REASON_ENABLED if sw.enabled else REASON_DISABLED), note
