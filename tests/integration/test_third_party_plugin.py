"""A third-party plugin, as a user would ship one (issue 10 item 4).

The test writes a separate distribution (`tote-hello-plugin`, its own pyproject with an entry
point in group `tote`), builds a wheel offline with the project's setuptools, installs it
with pip into a directory of its own, and runs `tote` with that directory on PYTHONPATH:

- `tote plugins` lists it with its distribution and version, and its hooks;
- a real controller against the real API server calls its `select_source` — a pluggy
  wrapper around the built-in async-awaited answer, which it reverses — and its `notify`;
- `plugins.disabled` in the config file turns it off, in `tote plugins` and the controller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.controller import Controllers
from tests.cluster.controlplane import ControlPlane
from tests.cluster.objects import create_node, create_pod, get, set_waiting, wait_event
from tests.cluster.procs import wait_until
from tests.integration.test_detection import REFUSED
from tote_core.salvage import planner

DIGEST = "sha256:" + "7" * 64
PLUGIN = '''
"""tote-hello-plugin: prefers the holder whose name sorts last; records what it sees."""

import json
import os
from collections.abc import Generator

from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import Incident, Notification


class HelloPlugin:
    def __init__(self) -> None:
        self.journal = os.environ.get("TOTE_HELLO_JOURNAL", "")

    def record(self, **entry: object) -> None:
        with open(self.journal, "a") as f:
            f.write(json.dumps(entry) + "\\n")

    @hookimpl(wrapper=True)
    def select_source(self, incident: Incident) -> Generator[None, list, list]:
        inner = yield
        answer = sorted(inner or [], reverse=True)
        self.record(hook="select_source", pod=incident.pod_name, inner=inner, answer=answer)
        return answer

    @hookimpl
    async def notify(self, notification: Notification) -> None:
        self.record(hook="notify", type=notification.type, pod=notification.pod_name)
'''
PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
dependencies = []

[project.entry-points.tote]
{entry}

[tool.setuptools]
py-modules = ["{module}"]
'''
TYPO = '''
from tote_core.hooks.hookspecs import hookimpl


class Typo:
    @hookimpl
    def on_detcted(self, incident: object) -> None: ...
'''


def install(root: Path, dist: str, version: str, module: str, source: str, entry: str
            ) -> Path:
    """Write the distribution, build its wheel offline (the project's setuptools, no build
    isolation) and pip-install it into a directory of its own; returns that directory."""
    src = root / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT).format(
        dist=dist, version=version, module=module, entry=entry))
    (src / f"{module}.py").write_text(textwrap.dedent(source))
    wheels, target = root / "wheels", root / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", str(wheels),
                    str(src)], check=True, capture_output=True)
    (wheel,) = wheels.glob(f"{module}-{version}-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    assert (target / f"{module}-{version}.dist-info" / "entry_points.txt").exists()
    return target


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tote-hello-plugin, installed."""
    return install(tmp_path_factory.mktemp("hello"), "tote-hello-plugin", "1.4.2",
                   "tote_hello_plugin", PLUGIN, "hello = \"tote_hello_plugin:HelloPlugin\"")


def env(site: Path, journal: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(site), "TOTE_HELLO_JOURNAL": str(journal)}


def tote_plugins(site: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tote_core.cli", "plugins", "--json", *args],
        check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
    ).stdout
    return {p["name"]: p for p in json.loads(out)}


def journal_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def config_disabled(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "tote.yaml"
    path.write_text("plugins:\n  disabled: [hello]\n")
    yield path


def test_listed_with_distribution_and_version(site: Path, config_disabled: Path) -> None:
    hello = tote_plugins(site)["hello"]
    assert hello["distribution"].replace("_", "-") == "tote-hello-plugin"
    assert hello["version"] == "1.4.2" and hello["builtin"] is False
    assert hello["enabled"] and hello["hooks"] == ["notify", "select_source"]
    assert tote_plugins(site, "--config", str(config_disabled))["hello"]["enabled"] is False


def test_controller_calls_its_wrapper_and_notify_and_config_disables_it(
    control_plane: ControlPlane, site: Path, tmp_path: Path, test_namespace: str,
    config_disabled: Path, controllers: Controllers,
) -> None:
    cp, ns = control_plane, test_namespace
    suffix = uuid.uuid4().hex[:6]
    first, last, target = f"holder-a-{suffix}", f"holder-b-{suffix}", f"target-{suffix}"
    image = f"127.0.0.1:5999/hello@{DIGEST}"
    create_node(cp, first, [[image]])
    create_node(cp, last, [[image]])
    create_node(cp, target)
    journal = tmp_path / "journal.jsonl"

    ctl = controllers.start("hello-on", env=env(site, journal))
    try:
        wait_until(ctl.leading, timeout=30, what="leads", proc=ctl.proc)
        create_pod(cp, ns, "greet", image, node=target,
                   annotations={"tote.dev/auto-salvage": "true"})
        set_waiting(cp, ns, "greet", reason="ErrImagePull", message=REFUSED)
        # No agents run here, so every source fails; the order they were tried in is the
        # order select_source answered.
        wait_event(cp, ns, "greet", "ImageSalvageFailed", timeout=60)
        wait_until(lambda: any(e.get("type") == "failed" for e in journal_entries(journal)),
                   timeout=30, what="the plugin's notify saw the failure")
    finally:
        ctl.stop()
    entries = journal_entries(journal)
    picks = [e for e in entries if e["hook"] == "select_source"]
    assert picks and picks[0]["pod"] == "greet"
    assert picks[0]["inner"] == [first, last]  # the built-in source-policy's awaited answer
    assert picks[0]["answer"] == [last, first]
    error = get(cp, "salvagerecord", planner.record_name(DIGEST, target), ns)["status"]["error"]
    assert error.index(last) < error.index(first), error  # tried in the wrapper's order
    notified = {e["type"] for e in entries if e["hook"] == "notify" and e["pod"] == "greet"}
    assert notified == {"detected", "failed"}

    # Turned off in the config file: same plugin installed, nothing called. (Another target
    # node: the first one's SalvageRecord is in its retry back-off.)
    journal.unlink()
    other_target = f"target2-{suffix}"
    create_node(cp, other_target)
    off = controllers.start("hello-off", f"--config={config_disabled}",
                            env=env(site, journal))
    try:
        wait_until(off.leading, timeout=30, what="leads", proc=off.proc)
        create_pod(cp, ns, "quiet", image, node=other_target,
                   annotations={"tote.dev/auto-salvage": "true"})
        set_waiting(cp, ns, "quiet", reason="ErrImagePull", message=REFUSED)
        wait_event(cp, ns, "quiet", "ImageSalvageFailed", timeout=60)
        logs = off.logs()["controller-hello-off"]
    finally:
        off.stop()
    assert journal_entries(journal) == []
    assert "plugin hello (tote_hello_plugin:HelloPlugin) disabled" in logs


def test_misspelled_hook_stops_start_up_naming_the_plugin(tmp_path: Path) -> None:
    typo = install(tmp_path, "tote-typo-plugin", "0.1.0", "tote_typo_plugin", TYPO,
                   "typo = \"tote_typo_plugin:Typo\"")
    environ = {**os.environ, "PYTHONPATH": str(typo)}
    done = subprocess.run([sys.executable, "-m", "tote_core.cli", "controller",
                           "--kubeconfig=/nonexistent", "--insecure"],
                          capture_output=True, text=True, env=environ)
    assert done.returncode == 2, done.stderr
    assert "plugin typo: on_detcted is not a hook; did you mean on_detected?" in done.stderr
    # `tote plugins` still lists every plugin, the broken one with its reason (exit 1).
    done = subprocess.run([sys.executable, "-m", "tote_core.cli", "plugins"],
                          capture_output=True, text=True, env=environ)
    assert done.returncode == 1, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("typo "))
    assert " failed " in row and "did you mean on_detected?" in row, done.stdout
    assert any(line.startswith("agent ") for line in done.stdout.splitlines())
