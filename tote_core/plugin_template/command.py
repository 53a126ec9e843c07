"""`tote plugin init NAME [--dir DIR]`: write a new plugin package.

What it writes, in `DIR/tote-NAME/`: `pyproject.toml` (distribution `tote-NAME`, depending on
`tote-salvage` — tote's distribution on PyPI, where `tote` is another project — with the
entry point `NAME` in group `tote`), `src/tote_NAME/plugin.py` (a settings Struct, so the
plugin gets `--NAME-…` flags, `TOTE_NAME_…` variables and a `plugins.NAME` config section,
and a `notify` hook), and `tests/` on tote's pytest plugin, which pass as written once the
package is installed (`pip install -e '.[test]' && pytest`).

Everything is checked before anything is written, and the package is written into a
temporary directory that is renamed into place at the end, so a refusal or a failure leaves
nothing behind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from string import Template

from tote_core import DISTRIBUTION
from tote_core.errors import ConfigError

NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
# `plugins:` keys of the config file that are not plugin sections (tote_core.hooks.discovery).
RESERVED = frozenset({"disabled", "config", "tote"})


def check_name(name: str) -> None:
    """A plugin name: the entry point, the flag prefix and (with '_') the package suffix."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a plugin name: use lowercase letters and digits, starting with a "
            "letter, words joined by single '-' or '_' (it becomes the entry point NAME, the "
            "flags --NAME-… and the package tote_NAME)")
    if name in RESERVED:
        raise ConfigError(f"{name!r} is reserved (the config file's plugins.{name} key means "
                          "something else); choose another name")
    installed = {ep.name: ep for ep in metadata.entry_points(group="tote")}
    if name in installed:
        ep = installed[name]
        dist = ep.dist.name if ep.dist else "?"
        raise ConfigError(f"{name!r} is already the name of an installed plugin ({ep.value}, "
                          f"from {dist}); choose another name")


def files(name: str) -> dict[str, str]:
    """Relative path → text of every file of the package for plugin `name`."""
    package = "tote_" + name.replace("-", "_")
    values = {
        "name": name, "package": package, "dist": "tote-" + name.replace("_", "-"),
        "env": "TOTE_" + name.replace("-", "_").upper(), "tote": DISTRIBUTION,
    }
    return {path.replace("PACKAGE", package): Template(text).substitute(values)
            for path, text in TEMPLATES.items()}


def create(name: str, directory: Path) -> Path:
    """Write the package for plugin `name` into `directory/tote-NAME`; returns its path.
    ConfigError (one line, nothing written) for a bad name or an unusable directory."""
    check_name(name)
    if not directory.is_dir():
        raise ConfigError(f"--dir {directory}: not an existing directory")
    target = directory / ("tote-" + name.replace("_", "-"))
    if target.exists() or target.is_symlink():
        raise ConfigError(f"{target} already exists; remove it or choose another --dir")
    if not os.access(directory, os.W_OK):
        raise ConfigError(f"--dir {directory}: not writable")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=directory))
    try:
        for rel, text in files(name).items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tote plugin",
        description="Create a plugin package: `tote plugin init NAME [--dir DIR]`.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="init")
    init = sub.add_parser("init", help="create a plugin package tote-NAME in --dir")
    init.add_argument("name", metavar="NAME",
                      help="the plugin's name: entry point, flag prefix (--NAME-…), package "
                           "tote_NAME")
    init.add_argument("--dir", default=".", help="where to create tote-NAME/ (default: .)")
    args = parser.parse_args(list(argv))
    target = create(args.name, Path(args.dir))
    package = "tote_" + args.name.replace("-", "_")
    print(f"created {target} (plugin {args.name}, package {package}, distribution "
          f"tote-{args.name.replace('_', '-')}); next: cd {target} && pip install -e "
          "'.[test]' && pytest")
    return 0


PYPROJECT = '''\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A tote plugin: $name"
readme = "README.md"
requires-python = ">=3.11"
# tote's distribution is `$tote` (PyPI's `tote` is an unrelated project).
dependencies = ["$tote>=0.1"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-trio>=0.8"]

# How tote finds the plugin: entry point `$name` in group `tote`.
[project.entry-points.tote]
$name = "$package.plugin:Plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
"*" = ["py.typed"]

[tool.pytest.ini_options]
trio_mode = true
testpaths = ["tests"]
'''

README = '''\
# $dist

A [tote](https://pypi.org/project/$tote/) plugin named `$name`.

```sh
pip install -e '.[test]'    # tote ($tote), pytest, pytest-trio
pytest                      # tests on tote's pytest plugin (fixtures tote_harness, …)
tote plugins                # lists `$name`, its hooks and its settings
```

Settings (class `Settings` in `src/$package/plugin.py`): field `prefix` is the flag
`--$name-prefix`, the variable `${env}_PREFIX`, the config-file key
`plugins: {$name: {prefix: …}}` and the chart value `plugins.config.$name.prefix`.
'''

PLUGIN = '''\
"""The `$name` tote plugin: a line per notification of the types it is set to handle.

A starting point: `notify` keeps the lines in memory and logs them; replace `deliver` with
your own delivery (and keep `notify` fast: it runs inside tote's detection and salvage
workers — hand slow work to a service registered with `context.add_service`).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import msgspec
from tote_core.hooks.context import PluginContext
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import NOTIFICATION_TYPES, Notification

log = logging.getLogger("tote.plugins.$name")


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The plugin's settings: flags --$name-…, variables ${env}_…, config file
    `plugins: {$name: …}`. Every field needs a default."""

    events: list[str] = msgspec.field(default_factory=lambda: ["salvaged", "failed"])
    prefix: str = "tote"

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "events": "comma list of notification types to handle "
                  "(detected, salvaged, failed, pushed; default salvaged,failed)",
        "prefix": "text each line starts with (default tote)",
    }

    def __post_init__(self) -> None:
        unknown = sorted(set(self.events) - set(NOTIFICATION_TYPES))
        if unknown:
            raise ValueError(f"events: unknown notification types {unknown} "
                             f"(use {', '.join(NOTIFICATION_TYPES)})")


class Plugin:
    """tote builds one object per process; `configure` gives it its settings."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.lines: list[str] = []

    @hookimpl
    def settings_type(self) -> type[Settings]:
        return Settings

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        self.settings = context.settings_for(Settings)

    @hookimpl
    def notify(self, notification: Notification) -> None:
        n = notification
        if n.type not in self.settings.events:
            return
        line = f"{self.settings.prefix}: {n.type} {n.namespace}/{n.pod_name} {n.image_ref}"
        if n.source_node:
            line += f" from {n.source_node} to {n.target_node}"
        if n.error:
            line += f": {n.error}"
        self.deliver(line)

    def deliver(self, line: str) -> None:
        self.lines.append(line)
        log.info("%s", line)
'''

TESTS = '''\
"""Tests of the `$name` plugin on tote's pytest plugin: a fake cluster that tote's real
informers read, scripted agents for the transfers, and tote's own detection and salvage."""

from __future__ import annotations

import pytest
from tote_core.errors import ConfigError
from tote_core.testing import objects
from tote_core.testing.fakekube import FakeCluster
from tote_core.testing.pytest_plugin import HarnessFactory
from tote_core.testing.scripted import ScriptedAgents

from $package.plugin import Plugin, Settings

DIGEST = "sha256:" + "a" * 64
IMAGE = f"docker.io/library/web@{DIGEST}"


async def test_settings_reach_the_plugin(tote_harness: HarnessFactory) -> None:
    plugin = Plugin()
    await tote_harness(plugins={"$name": plugin},
                       plugin_settings={"$name": {"prefix": "acme", "events": ["failed"]}})
    assert plugin.settings == Settings(prefix="acme", events=["failed"])


async def test_a_bad_setting_is_refused(tote_harness: HarnessFactory) -> None:
    with pytest.raises(ConfigError, match="events"):
        await tote_harness(plugins={"$name": Plugin()},
                           plugin_settings={"$name": {"events": ["sent"]}})


async def test_the_installed_entry_point_loads(tote_harness: HarnessFactory) -> None:
    h = await tote_harness(entry_points=["$name"])
    assert isinstance(h.host.plugin("$name"), Plugin)


async def test_a_salvage_is_notified(
        tote_harness: HarnessFactory, tote_cluster: FakeCluster, tote_agents: ScriptedAgents,
) -> None:
    tote_cluster.add(objects.namespace("shop"))
    tote_cluster.add(objects.node("node-a"))
    tote_cluster.add(objects.node("node-b", images=[IMAGE]))
    plugin = Plugin()
    h = await tote_harness(plugins={"agents": tote_agents, "$name": plugin})
    tote_cluster.add(objects.failing_pod("web-1", namespace="shop", image=IMAGE, node="node-a"))
    await h.run_pipeline()
    await h.settle()
    assert plugin.lines == [f"tote: salvaged shop/web-1 {IMAGE} from node-b to node-a"]


async def test_a_failed_salvage_is_notified(
        tote_harness: HarnessFactory, tote_cluster: FakeCluster, tote_agents: ScriptedAgents,
) -> None:
    tote_cluster.add(objects.namespace("shop"))
    tote_cluster.add(objects.node("node-a"))
    tote_cluster.add(objects.node("node-b", images=[IMAGE]))
    tote_agents.script(tote_agents.permanent("image too large", reason="too_large"))
    plugin = Plugin()
    h = await tote_harness(plugins={"agents": tote_agents, "$name": plugin},
                           plugin_settings={"$name": {"prefix": "acme"}})
    tote_cluster.add(objects.failing_pod("web-1", namespace="shop", image=IMAGE, node="node-a"))
    await h.run_pipeline()
    await h.settle()
    assert plugin.lines == [
        f"acme: failed shop/web-1 {IMAGE} from node-b to node-a: node-b: image too large"]
'''

TEMPLATES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "src/PACKAGE/__init__.py": '"""The `$name` tote plugin (see plugin.py)."""\n',
    "src/PACKAGE/py.typed": "",
    "src/PACKAGE/plugin.py": PLUGIN,
    "tests/test_plugin.py": TESTS,
}

