"""The chart's `plugins.config`: a plugin's own settings as the controller's flags.

Rendered with `helm template` (the pinned Kubernetes version), then:

- each key becomes `--<plugin>-<key in kebab-case>` (kebab, snake_case and camelCase keys), lists
  joined with commas, maps written k=v,k=v by key, whole numbers without an exponent, every
  argument quoted; nothing is rendered by default;
- the rendered flags, given to the real settings loader with the test plugin tote-acme
  installed (its wheel built offline, installed with pip into a directory of its own), reach
  the plugin's typed settings with the values the chart was given;
- bad values are refused by the schema or the template with one line: a plugin that is also
  in plugins.disabled, a non-object section, a nested value, a comma inside a list item, a
  key that cannot be a flag, two spellings of one setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.images import plugins
from tests.integration.test_helm import Helm, pod_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def helm(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(k8s_bin_dir / "helm", tmp_path_factory.mktemp("helm-home"))


def controller_args(helm: Helm, values: dict[str, Any]) -> list[str]:
    spec = pod_spec(helm.render(values), "Deployment")
    (container,) = spec["containers"]
    return [str(a) for a in container["args"]]


def plugin_args(args: list[str], *plugins_: str) -> list[str]:
    return [a for a in args if a.startswith(tuple(f"--{p}-" for p in plugins_))]


def test_nothing_by_default(helm: Helm) -> None:
    args = controller_args(helm, {})
    assert not plugin_args(args, "acme", "source-policy", "webhook"), args


def test_keys_become_flags(helm: Helm) -> None:
    values = {"plugins": {"config": {
        "acme": {"greeting": "hello, \"world\" & 'all'", "events": ["salvaged", "failed"],
                 "zoneFirst": True, "max_size": 1000000, "ratio": 0.5,
                 "labels": {"team": "platform", "env": "prod"}, "empty_list": []},
        "source-policy": {"zone_first": False},
        "rack-policy": {"pager-url": "https://pager.example.com/x?a=1,b=2"},
    }}}
    args = controller_args(helm, values)
    assert plugin_args(args, "acme", "source-policy", "rack-policy") == [
        "--acme-empty-list=",
        "--acme-events=salvaged,failed",
        "--acme-greeting=hello, \"world\" & 'all'",
        "--acme-labels=env=prod,team=platform",
        "--acme-max-size=1000000",
        "--acme-ratio=0.5",
        "--acme-zone-first=true",
        "--rack-policy-pager-url=https://pager.example.com/x?a=1,b=2",
        "--source-policy-zone-first=false",
    ]
    # the template quotes every argument: YAML never reinterprets a value
    out = helm.template("tote", "-s", "templates/controller-deployment.yaml",
                        values=values).stdout
    assert '- "--acme-zone-first=true"' in out
    assert '- "--acme-max-size=1000000"' in out


@pytest.fixture(scope="module")
def acme_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugin installed the way pip installs a user's plugin: into a directory
    that is then on the interpreter's path."""
    d = tmp_path_factory.mktemp("acme")
    whl = plugins.build_wheel("tote-acme", d / "wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-index", "--disable-pip-version-check", "--target",
                          str(d / "site"), str(whl)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return d / "site"


def tote_plugins(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tote_core.cli", "plugins", "--json", *args],
        capture_output=True, text=True, timeout=120, cwd=site,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("TOTE_")},
             "PYTHONPATH": str(site)})


def test_rendered_flags_reach_the_plugins_settings(helm: Helm, acme_path: Path) -> None:
    """The flags as rendered, parsed by the real loader into acme's typed settings."""
    args = controller_args(helm, {"plugins": {"config": {"acme": {
        "greeting": "hello from the chart", "events": ["salvaged", "failed"]}}}})
    flags = plugin_args(args, "acme")
    res = tote_plugins(acme_path, *flags)
    assert res.returncode == 0, res.stdout + res.stderr
    (acme,) = [r for r in json.loads(res.stdout) if r["name"] == "acme"]
    assert acme["distribution"] == "tote-acme" and acme["enabled"], acme
    settings = {s["name"]: s for s in acme["settings"]}
    assert settings["greeting"]["value"] == "hello from the chart"
    assert settings["events"]["value"] == ["salvaged", "failed"]
    assert {settings[k]["source"] for k in ("greeting", "events")} != {"default"}


@pytest.mark.parametrize(("config", "disabled", "needle"), [
    ({"acme": {"greeting": "hi"}}, ["acme"],
     "plugins.config.acme: plugin acme is also in plugins.disabled"),
    ({"acme": "hi"}, [], "at '/plugins/config/acme': got string, want object"),
    ({"acme": {"nested": {"a": {"b": 1}}}}, [], "/plugins/config/acme/nested"),
    ({"acme": {"events": ["a", "b,c"]}}, [], "/plugins/config/acme/events"),
    ({"acme": {"labels": {"a=b": "c"}}}, [], "/plugins/config/acme/labels"),
    ({"acme": {"--greeting": "hi"}}, [], "invalid propertyName '--greeting'"),
    ({"-acme": {"greeting": "hi"}}, [], "invalid propertyName '-acme'"),
    ({"acme": {"max-size": 1, "max_size": 2}}, [],
     "plugins.config.acme: max-size and max_size are the same setting (--acme-max-size); "
     "keep one"),
], ids=["disabled", "not-an-object", "nested", "comma-in-list", "equals-in-key", "flag-key",
        "plugin-name", "same-setting-twice"])
def test_bad_plugin_config_refused(helm: Helm, config: dict[str, Any], disabled: list[str],
                                   needle: str) -> None:
    res = helm.template("tote", values={"plugins": {"config": config, "disabled": disabled}},
                        check=False)
    assert res.returncode != 0, res.stdout
    assert needle in res.stderr, res.stderr


def test_lint_with_plugin_config(helm: Helm) -> None:
    helm.run("lint", str(REPO / "deploy" / "helm" / "tote"), "--strict", values={
        "plugins": {"config": {"acme": {"greeting": "hi", "events": ["failed"]}}}})
