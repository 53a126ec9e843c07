"""Settings: defaults, precedence, units, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tote_core.errors import ConfigError
from tote_core.settings import ControllerSettings, load, parse_args, parse_duration, parse_size


def test_defaults_match_spec() -> None:
    s = load(ControllerSettings, {}, environ={})
    assert s.enabled is True
    assert s.max_image_size == 2147483648
    assert s.max_concurrent_salvages == 2
    assert s.salvagerecord_ttl == 168 * 3600
    assert s.log_format == "text"
    assert s.salvage_on_auth_failure is False


def test_sizes_and_durations() -> None:
    assert parse_size("2GB") == 2147483648
    assert parse_size("0") == 0
    assert parse_size("500Mi") == 500 * 1024**2
    assert parse_duration("168h") == 604800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    for bad in ["abc", "2XB", "-1"]:
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ["h", "1x", "5 m"]:
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max-concurrent-salvages: 5\nworkers: 7\nplugins:\n  disabled: [inheritance]\n")
    s = load(
        ControllerSettings,
        {"workers": "9"},
        config_file=str(cfg),
        environ={"TOTE_MAX_CONCURRENT_SALVAGES": "6", "TOTE_DENY_NAMESPACES": "a, b"},
    )
    assert s.max_concurrent_salvages == 6  # env beats file
    assert s.workers == 9  # flag beats file
    assert s.deny_namespaces == ["a", "b"]
    assert s.plugins_disabled == ["inheritance"]


def test_flags() -> None:
    s = parse_args(
        ControllerSettings,
        ["--enabled=false", "--salvage-on-auth-failure",
         "--agent-endpoints", "n1=127.0.0.1:1,n2=h:2",
         "--max-image-size", "1GB", "--log-format", "json"],
        "t",
    )
    assert s.enabled is False and s.salvage_on_auth_failure is True
    assert s.agent_endpoints == {"n1": "127.0.0.1:1", "n2": "h:2"}
    assert s.max_image_size == 1024**3 and s.log_format == "json"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"max_concurrent_salvages": "0"}, "max_concurrent_salvages"),
        ({"log_format": "xml"}, "log_format"),
        ({"enabled": "maybe"}, "--enabled"),
        ({"max_image_size": "lots"}, "--max-image-size"),
        ({"webhook_events": "detected,exploded"}, "exploded"),
        ({"agent_endpoints": "nonsense"}, "name=value"),
        ({"registry_resolve_ca": "/nonexistent/ca.pem"}, "registry_resolve_ca"),
        ({"tls_cert": "/nonexistent/cert.pem"}, "tls_cert"),
    ],
)
def test_bad_values_name_the_setting(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(ControllerSettings, flags, environ={})
    assert needle in str(err.value)


def test_unknown_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max-imagesize: 5\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load(ControllerSettings, {}, config_file=str(cfg), environ={})
