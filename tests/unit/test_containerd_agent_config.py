"""`tote_containerd.agent.daemon.run` reports configuration problems as one plain `ConfigError`
(not wrapped in exception groups), so `tote agent` / `python -m tote_containerd.agent` print
one line instead of a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from tote_containerd.agent.daemon import run
from tote_containerd.agent.settings import AgentSettings

from tests.cluster.procs import free_port
from tote_core.errors import ConfigError
from tote_core.settings_loader import parse_args


def _settings(tmp_path: Path, *args: str) -> AgentSettings:
    base = ["--containerd-socket", str(tmp_path / "no-containerd.sock"),
            "--listen-address", "127.0.0.1", "--grpc-port", str(free_port()),
            "--metrics-port", str(free_port()), "--data-port", "0"]
    settings: AgentSettings = parse_args(AgentSettings, [*base, *args], "tote agent")
    return settings


def _run(settings: AgentSettings) -> ConfigError:
    async def main() -> None:
        with trio.fail_after(20):
            await run(settings)

    with pytest.raises(BaseException) as info:
        trio.run(main)
    assert type(info.value) is ConfigError, repr(info.value)  # not an ExceptionGroup
    return info.value


@pytest.fixture
def busy_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_no_tls_without_insecure(tmp_path: Path) -> None:
    assert "refusing to start without mTLS" in str(_run(_settings(tmp_path)))


def test_missing_tls_file(tmp_path: Path) -> None:
    # Settings parsing already refuses unreadable TLS paths (tote_core.settings); run()
    # checks again for settings built otherwise. Either way: one plain ConfigError.
    with pytest.raises(ConfigError, match="tls_cert: cannot read"):
        _settings(tmp_path, "--tls-cert", str(tmp_path / "c"), "--tls-key",
                  str(tmp_path / "k"), "--tls-ca", str(tmp_path / "ca"))
    settings = _settings(tmp_path, "--insecure")
    settings.tls_cert, settings.tls_key, settings.tls_ca = (
        str(tmp_path / "c"), str(tmp_path / "k"), str(tmp_path / "ca"))
    err = _run(settings)
    assert "--tls-cert" in str(err) and "cannot read" in str(err)


def test_unreadable_tls_files(tmp_path: Path) -> None:
    for name in ("c", "k", "ca"):
        (tmp_path / name).write_text("not a certificate\n")
    err = _run(_settings(tmp_path, "--tls-cert", str(tmp_path / "c"), "--tls-key",
                         str(tmp_path / "k"), "--tls-ca", str(tmp_path / "ca")))
    assert "--tls-cert" in str(err) and "no PEM certificate" in str(err)


def test_bad_platform(tmp_path: Path) -> None:
    err = _run(_settings(tmp_path, "--insecure", "--platform", "bogus/x/y/z"))
    assert "--platform" in str(err)


@pytest.mark.parametrize("flag", ["--grpc-port", "--metrics-port"])
def test_port_in_use(tmp_path: Path, busy_port: int, flag: str) -> None:
    err = _run(_settings(tmp_path, "--insecure", flag, str(busy_port)))
    assert f"({flag})" in str(err) and str(busy_port) in str(err)


def test_module_entry_point_prints_one_line(tmp_path: Path, busy_port: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tote_containerd.agent", "--insecure",
         "--containerd-socket", str(tmp_path / "no.sock"), "--listen-address", "127.0.0.1",
         "--grpc-port", str(free_port()), "--metrics-port", str(busy_port),
         "--data-port", "0"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"tote agent: cannot listen on 127.0.0.1:{busy_port} (--metrics-port)" \
        in proc.stderr
