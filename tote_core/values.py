"""Values as people write them in flags, environment and config files — sizes (`2GB`,
`512Mi`), durations (`30s`, `168h`), booleans (`true`/`yes`/`on`/`1`) — and the range checks
every setting goes through, each failing with a one-line reason that names the flag."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import msgspec

# Binary throughout: the documented `2GB` default is 2147483648 bytes, so GB means GiB here.
_SIZE_UNITS = {"": 1, "b": 1} | {
    unit: 1024**power
    for power, letter in enumerate("kmgt", start=1)
    for unit in (letter, letter + "b", letter + "i", letter + "ib")
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# Field types of settings Structs (core's and plugins'): the loader parses a value written
# as `30s` / `2GB` by the field's type, so a plugin's settings read exactly like core's.
PARSE = "tote_parse"
Duration = Annotated[float, msgspec.Meta(extra={PARSE: "duration"})]  # seconds; `30s`, `1h30m`
Size = Annotated[int, msgspec.Meta(extra={PARSE: "size"})]  # bytes; `2GB`, `512Mi`


def parse_size(text: str | int) -> int:
    """Parse `2GB`, `500Mi`, `0`, `2147483648` into bytes.

    The documented `2GB` default is 2147483648 bytes, so `GB`/`G` are binary here (as in the Go
    original's flag), and `MB` likewise; `Gi`/`Mi` are accepted too.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("size must not be negative")
        if text >= 2**63:
            raise ValueError(f"size {text} is too large")
        return text
    if not isinstance(text, str):
        # A config file can hold anything YAML can (true, 1.5, a list, null).
        raise ValueError(f"not a size: {text!r} (examples: 2GB, 500MB, 0)")
    # ASCII digits only: \d would take "٣GB"; a float of 400 digits is inf (OverflowError).
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 2GB, 500MB, 0)")
    unit = m.group(2).lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit {m.group(2)!r} in {text!r}")
    value = float(m.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(value) or value >= 2**63:
        raise ValueError(f"size {text!r} is too large")
    return int(value)


def parse_duration(text: str | float | int) -> float:
    """Parse Go-style durations (`168h`, `30s`, `1h30m`, `500ms`) or plain seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or text != text or text == float("inf"):
            raise ValueError(f"duration must be a finite number of seconds >= 0, got {text!r}")
        return float(text)
    if not isinstance(text, str):
        # A config file can hold anything YAML can (true, a list, null).
        raise ValueError(f"not a duration: {text!r} (examples: 168h, 30s, 1h30m)")
    s = text.strip()
    # ASCII digits only (\d would take "٣s"), and at most 15 of them before the point so
    # the value stays finite and exact enough.
    if re.fullmatch(r"[0-9]{1,15}(\.[0-9]+)?", s):
        return float(s)
    parts = re.findall(r"([0-9]{1,15}(?:\.[0-9]+)?)(ms|s|m|h|d)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"not a duration: {text!r} (examples: 168h, 30s, 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def parse_bool(value: Any) -> bool:
    """The one boolean parser: true/false, yes/no, on/off, 1/0, any case.

    Used for every boolean flag, `TOTE_*` variable and config-file value, and for the
    kill-switch ConfigMap, so the same word means the same thing wherever it is written.
    """
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r} (use true/false, yes/no, on/off or 1/0)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_port(name: str, port: int, *, zero_means: str = "") -> None:
    """0 < port < 65536; `zero_means` documents a port where 0 switches something off."""
    if zero_means and port == 0:
        return
    if not 0 < port < 65536:
        extra = f" (or 0: {zero_means})" if zero_means else ""
        raise ValueError(f"{_flag(name)} must be a port between 1 and 65535{extra}, got {port}")


def check_address(name: str, address: str) -> None:
    """`host:port` with a port in range (IPv6 hosts in brackets)."""
    _host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{_flag(name)} must be host:port, got {address!r}")
    check_port(name, int(port))


def check_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{_flag(name)} must be a positive duration, got {value!r}")
