"""Settings, flags, sizes, durations, annotation and kill-switch values (property-based).

Tried:
- `parse_size` / `parse_duration` on arbitrary text, text shaped like sizes/durations
  (400-digit numbers, non-ASCII digits, every unit, whitespace) and every YAML scalar type
  (None, bool, float, inf, nan, lists): a value, or ValueError — nothing else; sizes round
  trip (`parse_size(f"{n}{unit}") == n * unit`), durations add up component-wise;
- `parse_args` on random argv built from the real flag names, random values, unknown flags,
  abbreviations and bare words: settings, or `ConfigError` — never SystemExit or another
  exception (only `-h/--help` exits, on purpose);
- config files with arbitrary YAML mappings (numeric/boolean keys, nested values, nulls)
  and undecodable bytes: settings, or `ConfigError`;
- the annotation reader `flag()` and the kill-switch reader on arbitrary strings: only
  exactly "true"/"false" are read as such, and neither raises.

Found and fixed (settings.py), each with a regression example below:
- `parse_size("9" * 400)` raised OverflowError (float → inf → int); an integer of 2**63
  or more (YAML) was returned as a size;
- `parse_size` / `parse_duration` took non-ASCII digits ("٣GB" = 3 GiB) through `\\d`;
- `parse_duration("9" * 400 + "s")` returned inf; `parse_duration(True)` returned 1.0;
- YAML values of other types (`max-image-size: null`, `reconcile-timeout: [1]`) raised
  TypeError/AttributeError; a numeric YAML key (`1: x`) raised AttributeError;
- a config file that is not UTF-8 raised UnicodeDecodeError;
- argparse errors (unknown flag, missing value) exited the process from inside the parser
  instead of raising the settings' own `ConfigError`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tote_containerd.agent.settings import AgentSettings

from tote_core.annotations import flag
from tote_core.errors import ConfigError
from tote_core.kube.cache import Caches
from tote_core.settings import ControllerSettings
from tote_core.settings_loader import load, parse_args
from tote_core.structs.kube import ConfigMap, ObjectMeta
from tote_core.values import parse_duration, parse_size

FAST = settings(max_examples=150, deadline=2000,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

_yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
)
_numberish = st.one_of(
    st.from_regex(r"\s*[0-9٣]{1,400}(\.[0-9]{1,5})?\s*[a-zA-Z]{0,3}\s*", fullmatch=True),
    st.text(max_size=30),
)

# --- sizes ---------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "ki": 1024, "kib": 1024, "M": 1024**2,
          "MB": 1024**2, "Mi": 1024**2, "G": 1024**3, "GB": 1024**3, "Gi": 1024**3,
          "T": 1024**4, "TiB": 1024**4}


@FAST
@given(_numberish | _yaml_scalars)
@example("9" * 400)
@example("٣GB")
@example(True)
@example(None)
@example(1.5)
@example(2**63)
def test_parse_size_returns_bytes_or_value_error(value: Any) -> None:
    try:
        got = parse_size(value)
    except ValueError as exc:
        assert str(exc)
        return
    assert type(got) is int and 0 <= got < 2**63
    if isinstance(value, str):
        assert "".join(value.split()).isascii()  # Unicode spaces around are fine


@FAST
@given(st.integers(0, 10**6), st.sampled_from(sorted(_UNITS)))
def test_sizes_round_trip(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * _UNITS[unit]
    assert parse_size(f" {n} {unit} ") == n * _UNITS[unit]


@pytest.mark.parametrize("bad", ["9" * 400, "٣GB", "1" * 20 + "TB"])
def test_size_regressions(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


# --- durations -----------------------------------------------------------------------------

_DUR = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@FAST
@given(_numberish | _yaml_scalars)
@example("9" * 400 + "s")
@example("٣s")
@example(True)
@example(float("inf"))
@example(float("nan"))
def test_parse_duration_returns_seconds_or_value_error(value: Any) -> None:
    try:
        got = parse_duration(value)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(got, float) and math.isfinite(got) and got >= 0


@FAST
@given(st.lists(st.tuples(st.integers(0, 10**5), st.sampled_from(sorted(_DUR))),
                min_size=1, max_size=4))
def test_durations_add_up(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(sum(n * _DUR[u] for n, u in parts))


@pytest.mark.parametrize("bad", ["9" * 400 + "s", "٣s", True, float("inf"), float("nan"),
                                 None, [1]])
def test_duration_regressions(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


# --- argv ----------------------------------------------------------------------------------


def _flag_names(cls: type[msgspec.Struct]) -> list[str]:
    out = []
    for f in msgspec.structs.fields(cls):
        out.append("--" + f.name.replace("_", "-"))
        if f.type is bool:
            out.append("--no-" + f.name.replace("_", "-"))
    return out


_values = st.one_of(
    st.sampled_from(["true", "false", "0", "-1", "65536", "2GB", "30s", "1h30m", "a=b",
                     "a,b", "", "json", "debug", "127.0.0.1:0", "inf", "nan", "1e999",
                     "9" * 40]),
    st.text(max_size=12).filter(lambda s: "\x00" not in s),
)


@st.composite
def argvs(draw: st.DrawFn, cls: type[msgspec.Struct]) -> list[str]:
    names = _flag_names(cls)
    argv: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 5))
        name = draw(st.sampled_from(names))
        if kind == 0:
            argv.append(name)
        elif kind == 1:
            argv += [name, draw(_values)]
        elif kind == 2:
            argv.append(f"{name}={draw(_values)}")
        elif kind == 3:
            argv.append(name[: draw(st.integers(3, len(name)))])  # abbreviations
        elif kind == 4:
            argv.append("--" + draw(st.text("abcxyz-", min_size=1, max_size=8)))
        else:
            argv.append(draw(_values))
    return [a for a in argv if a not in ("-h", "--help") and not a.startswith("--h")]


@FAST
@given(argvs(ControllerSettings))
@example(["--unknown-flag"])
@example(["--workers"])
@example(["stray"])
@example(["--max-image-size", "9" * 400])
def test_controller_argv_gives_settings_or_config_error(argv: list[str]) -> None:
    try:
        s = parse_args(ControllerSettings, argv, "tote controller")
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(s, ControllerSettings)


@FAST
@given(argvs(AgentSettings))
@example(["--grpc-port"])
def test_agent_argv_gives_settings_or_config_error(argv: list[str]) -> None:
    try:
        s = parse_args(AgentSettings, argv, "tote agent")
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(s, AgentSettings)


def test_help_still_exits_zero() -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(ControllerSettings, ["--help"], "tote controller")
    assert exc.value.code == 0


# --- config files ----------------------------------------------------------------------------

_keys = st.one_of(
    st.sampled_from([f.name.replace("_", "-") for f in msgspec.structs.fields(ControllerSettings)]
                    + ["plugins"]),
    st.integers(), st.booleans(), st.text(max_size=6),
)


@FAST
@given(st.dictionaries(_keys, _yaml_scalars | st.just({"disabled": ["x"]}), max_size=4))
@example({1: "x"})
@example({"max-image-size": None})
@example({"reconcile-timeout": [1]})
@example({"max-image-size": 1.5})
def test_config_file_gives_settings_or_config_error(
    tmp_path: Path, data: dict[Any, Any]
) -> None:
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    try:
        s = load(ControllerSettings, {}, config_file=str(cfg), environ={})
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(s, ControllerSettings)


def test_config_file_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"workers: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(ControllerSettings, {}, config_file=str(cfg), environ={})


# --- annotation and kill-switch values ---------------------------------------------------------


@FAST
@given(st.dictionaries(st.text(max_size=20), st.text(max_size=10), max_size=4),
       st.sampled_from(["tote.dev/allow", "tote.dev/auto-salvage"]),
       st.none() | st.text(max_size=10) | st.sampled_from(["true", "false", "True", " true",
                                                           "yes", "1", ""]))
def test_annotation_values_are_exactly_true_or_false(
    annotations: dict[str, str], key: str, value: str | None
) -> None:
    if value is not None:
        annotations[key] = value
    else:
        annotations.pop(key, None)
    got = flag(annotations, key)
    if value is None:
        assert got is None
    else:
        assert got is (value == "true")  # anything but exactly "true" is not opted in


def _switch(value: str | None) -> bool | None:
    caches = Caches.__new__(Caches)
    caches.namespace, caches.config_map = "tote", "tote-config"
    data = {} if value is None else {"enabled": value}
    cm = ConfigMap(metadata=ObjectMeta(name="tote-config", namespace="tote"), data=data)
    caches.config = type("Fake", (), {"get": staticmethod(lambda key: cm)})()  # type: ignore[assignment]
    return caches.runtime_enabled()


@FAST
@given(st.none() | st.text(max_size=12)
       | st.sampled_from(["true", "false", "FALSE", " false\n", "True", "off", "0", "no"]))
def test_kill_switch_value_never_raises(value: str | None) -> None:
    got = _switch(value)
    if value is None:
        assert got is None
        return
    assert isinstance(got, bool)
    if value.strip().lower() == "false":
        assert got is False
    if value.strip().lower() == "true":
        assert got is True
