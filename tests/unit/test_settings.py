"""Settings: defaults, precedence, units, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tote_containerd.agent.settings import AgentSettings

from tote_core.errors import ConfigError
from tote_core.hooks import loading
from tote_core.settings import ControllerSettings
from tote_core.settings_loader import load
from tote_core.values import parse_bool, parse_duration, parse_size


def controller(flags: dict[str, str], *, config_file: str | None = None,
               environ: dict[str, str] | None = None) -> loading.Loaded:
    """What `tote controller` loads from these flags: core's settings and the plugins'."""
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    if config_file:
        argv.append(f"--config={config_file}")
    return loading.load(ControllerSettings, argv, "t", environ=environ or {})


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
    got = loading.load(
        ControllerSettings,
        ["--enabled=false", "--salvage-on-auth-failure",
         "--agent-endpoints", "n1=127.0.0.1:1,n2=h:2",
         "--max-image-size", "1GB", "--log-format", "json"],
        "t", environ={},
    )
    s = got.settings
    assert s.enabled is False and s.salvage_on_auth_failure is True
    assert got.plugin_settings["agent"].endpoints == {  # type: ignore[attr-defined]
        "n1": "127.0.0.1:1", "n2": "h:2"}
    assert s.max_image_size == 1024**3 and s.log_format == "json"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"max_concurrent_salvages": "0"}, "max_concurrent_salvages"),
        ({"log_format": "xml"}, "--log-format"),
        ({"enabled": "maybe"}, "--enabled"),
        ({"max_image_size": "lots"}, "--max-image-size"),
        ({"webhook_events": "detected,exploded"}, "plugin webhook: invalid settings: "
                                                  "--webhook-events: unknown event types"),
        ({"agent_endpoints": "nonsense"}, "plugin agent: invalid value for --agent-endpoints"),
        ({"registry_resolve_ca": "/nonexistent/ca.pem"}, "--registry-resolve-ca: cannot read"),
        ({"tls_cert": "/nonexistent/cert.pem"}, "tls_cert"),
    ],
)
def test_bad_values_name_the_setting(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        controller(flags)
    assert needle in str(err.value)


def test_unknown_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max-imagesize: 5\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load(ControllerSettings, {}, config_file=str(cfg), environ={})


@pytest.mark.parametrize(("word", "value"), [
    ("true", True), ("yes", True), ("on", True), ("1", True), ("TRUE", True), (" On ", True),
    ("false", False), ("no", False), ("off", False), ("0", False), ("No", False),
    (True, True), (False, False), (1, True), (0, False),
])
def test_one_boolean_parser(word: object, value: bool) -> None:
    assert parse_bool(word) is value


@pytest.mark.parametrize("word", ["", "maybe", "enabled", "2", "tru", "y"])
def test_boolean_parser_rejects_other_words(word: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(word)


def test_kill_switch_same_words_from_flag_env_and_file(tmp_path: Path) -> None:
    """`off`, `no`, `0` mean OFF whether written as flag, TOTE_ENABLED or in the file."""
    for word in ("off", "no", "0", "false"):
        assert load(ControllerSettings, {"enabled": word}, environ={}).enabled is False
        assert load(ControllerSettings, {}, environ={"TOTE_ENABLED": word}).enabled is False
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f'enabled: "{word}"\n')
        assert load(ControllerSettings, {}, config_file=str(cfg), environ={}).enabled is False
    cfg.write_text("enabled: off\n")  # YAML's own boolean
    assert load(ControllerSettings, {}, config_file=str(cfg), environ={}).enabled is False


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"agent_port": "-1"}, "--agent-port must be a port between 1 and 65535, got -1"),
        ({"agent_port": "0"}, "--agent-port"),
        ({"agent_port": "65536"}, "--agent-port"),
        ({"metrics_address": "0.0.0.0:70000"}, "--metrics-address"),
        ({"health_address": "nonsense"}, "--health-address must be host:port"),
        ({"retry_period": "0"}, "--retry-period must be a positive duration"),
        ({"reconcile_timeout": "0s"}, "--reconcile-timeout"),
        ({"transfer_timeout": "0"}, "--transfer-timeout"),
        ({"reap_interval": "0"}, "--reap-interval"),
        ({"salvagerecord_ttl": "0"}, "--salvagerecord-ttl"),
        ({"registry_resolve_timeout": "0"}, "--registry-resolve-timeout"),
        ({"lease_duration": "10s", "renew_deadline": "10s"}, "--lease-duration > --renew"),
        ({"renew_deadline": "2s", "retry_period": "2s"}, "--renew-deadline > --retry-period"),
        ({"admission_address": "0.0.0.0:9443"}, "needs --admission-tls-cert"),
        ({"admission_address": "0.0.0.0:0"}, "--admission-address"),
    ],
)
def test_ranges_fail_closed(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        controller(flags)
    assert needle in str(err.value)


def test_ranges_from_config_file_too(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins:\n  agent:\n    port: -1\n")
    with pytest.raises(ConfigError, match="plugin agent: invalid settings: --agent-port"):
        controller({}, config_file=str(cfg))
    cfg.write_text("retry-period: .inf\n")
    with pytest.raises(ConfigError, match="--retry-period"):
        load(ControllerSettings, {}, config_file=str(cfg), environ={})


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"grpc_port": "-1"}, "--grpc-port"),
        ({"metrics_port": "99999"}, "--metrics-port"),
        ({"data_port": "-5"}, "--data-port must be a port between 1 and 65535 (or 0"),
        ({"transfer_parallelism": "0"}, "--transfer-parallelism"),
    ],
)
def test_agent_ranges(flags: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(AgentSettings, flags, environ={})
    assert needle in str(err.value)
    assert load(AgentSettings, {"data_port": "0"}, environ={}).data_port == 0


def test_cli_exits_nonzero_with_one_line_for_ranges() -> None:
    """What was tried: `--agent-port -1` and `--retry-period=0` on the command line."""
    for bad in (["--agent-port", "-1"], ["--retry-period=0"]):
        proc = subprocess.run(
            [sys.executable, "-m", "tote_core.cli", "controller", "--insecure", *bad],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(("tote controller: invalid settings: --",
                                       "tote controller: plugin agent: invalid settings: --"))



def _issue(d: Path) -> dict[str, str]:
    return {"tls_issue_secrets": "tote", "tls_cert": str(d / "tls.crt"),
            "tls_key": str(d / "tls.key"), "tls_ca": str(d / "ca.crt")}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"tls_issue_secrets": "Tote_1"}, "not a valid Secret name prefix"),
        ({"insecure": "true"}, "--tls-issue-secrets and --insecure exclude each other"),
        ({"tls_cert": "", "tls_key": "", "tls_ca": ""}, "needs --tls-cert, --tls-key and"),
        ({"tls_cert": "/nonexistent-dir/tls.crt"}, "tls_cert: cannot write"),
        ({"tls_issue_validity": "30s"}, "--tls-issue-validity must be between 1m and 3650"),
        ({"tls_issue_validity": "4000d"}, "--tls-issue-validity must be between"),
        ({"admission_address": "0.0.0.0:9443", "admission_tls_cert": "{d}/w.crt",
          "admission_tls_key": "{d}/w.key"}, "needs --admission-webhook-name"),
        ({"admission_webhook_name": "x"}, "--admission-webhook-name needs --admission-addr"),
        ({"tls_issue_secrets": "", "tls_cert": "", "tls_key": "", "tls_ca": "",
          "admission_webhook_name": "x"}, "--admission-webhook-name needs --tls-issue-secr"),
    ],
)
def test_issuer_settings_fail_closed(extra: dict[str, str], needle: str,
                                     tmp_path: Path) -> None:
    """What `--tls-issue-secrets` needs is checked before anything starts, one line each."""
    flags = {**_issue(tmp_path), **{k: v.replace("{d}", str(tmp_path)) for k, v in extra.items()}}
    with pytest.raises(ConfigError) as err:
        load(ControllerSettings, {k: v for k, v in flags.items() if v}, environ={})
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_issuer_settings_accept_files_that_do_not_exist_yet(tmp_path: Path) -> None:
    s = load(ControllerSettings, {**_issue(tmp_path), "tls_issue_validity": "1m"}, environ={})
    assert s.tls_issue_secrets == "tote" and s.tls_issue_validity == 60
