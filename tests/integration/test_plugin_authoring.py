"""What a plugin author runs into, tried the way they would: real distributions (built into
wheels offline, pip-installed into directories of their own) next to the built-ins, and the
real `tote plugins` / `tote controller` processes.

What was tried, each with the one line it must produce:
- a wrapper that is not a generator, a misspelled hook, a settings hook that raises, a
  plugin that fails to import: `tote plugins` still prints every row (state and reason,
  "did you mean" for the hook, how to run without the broken ones) and exits 1;
  `tote controller` refuses to start with one line naming the plugin;
- the disabled list from flag, environment and config file: one source decides, in that
  order, and both commands agree;
- a plugin's own settings from flags, `TOTE_<PLUGIN>_<NAME>` and `plugins.<plugin>:`; a bad
  value (naming where it came from), an unknown section, an unknown key (with the closest),
  a plugin setting written at the top of the file, a built-in's old name in the disabled
  list; a disabled plugin's flags are accepted;
- call order: a third-party plain first-result `select_source` answers before the built-in
  `source-policy`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.integration.test_third_party_plugin import install
from tote_core.hooks.host import PluginHost
from tote_core.hooks.types import Incident, NodeInfo

ACME = '''
from typing import ClassVar

import msgspec

from tote_core.hooks.hookspecs import hookimpl
from tote_core.values import Duration


class AcmeSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    greeting: str = "hello"
    timeout: Duration = 5.0
    zones: list[str] = msgspec.field(default_factory=list)

    FLAG_HELP: ClassVar[dict[str, str]] = {"greeting": "what acme says"}

    def __post_init__(self) -> None:
        if self.greeting == "shout":
            raise ValueError("--acme-first-greeting: no shouting")


class AcmeFirst:
    @hookimpl
    def settings_type(self) -> type[AcmeSettings]:
        return AcmeSettings

    @hookimpl
    def select_source(self, candidates: list) -> list:
        return sorted((c.name for c in candidates), reverse=True)
'''
BROKEN = {
    "bad-wrapper": ("tote_bad_wrapper", '''
from tote_core.hooks.hookspecs import hookimpl


class BadWrapper:
    @hookimpl(wrapper=True)
    def select_source(self, candidates: list) -> list:
        return [c.name for c in candidates]
''', "BadWrapper"),
    "typo": ("tote_typo", '''
from tote_core.hooks.hookspecs import hookimpl


class Typo:
    @hookimpl
    def on_salvagd(self, incident: object) -> None: ...
''', "Typo"),
    "raising-settings": ("tote_raising_settings", '''
from tote_core.hooks.hookspecs import hookimpl


class Raising:
    @hookimpl
    def settings_type(self) -> type:
        raise RuntimeError("boom while declaring")
''', "Raising"),
    "broken-import": ("tote_broken_import", '''
import tote_core.no_such_module  # noqa: F401


class Never: ...
''', "Never"),
}


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install(tmp_path_factory.mktemp("acme"), "tote-acme-first", "0.3.0",
                   "tote_acme_first", ACME, 'acme-first = "tote_acme_first:AcmeFirst"')


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: install(tmp_path_factory.mktemp(name), f"tote-{name}", "1.0.0", module,
                          source, f'{name} = "{module}:{cls}"')
            for name, (module, source, cls) in BROKEN.items()}


def tote(sites: list[Path], *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOTE_")}
    return subprocess.run(
        [sys.executable, "-m", "tote_core.cli", *args], capture_output=True, text=True,
        timeout=120, env={**clean, "PYTHONPATH": os.pathsep.join(map(str, sites)),
                          **(env or {})})


def rows(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return {p["name"]: p for p in json.loads(proc.stdout)}


def test_tote_plugins_lists_every_plugin_when_some_are_broken(
        acme: Path, broken: dict[str, Path]) -> None:
    proc = tote([acme, *broken.values()], "plugins")
    assert proc.returncode == 1, proc.stderr
    table = {line.split()[0]: line for line in proc.stdout.splitlines()[1:] if line.strip()}
    for name in ("agent", "webhook", "source-policy", "acme-first", *BROKEN):
        assert name in table, proc.stdout
    assert " enabled " in table["acme-first"] and " enabled " in table["agent"]
    assert "select_source is a wrapper (wrapper=True) but not a generator function" in \
        table["bad-wrapper"]
    assert "on_salvagd is not a hook; did you mean on_salvaged?" in table["typo"]
    assert "settings_type hook raised RuntimeError: boom while declaring" in \
        table["raising-settings"]
    assert "failed to load (tote_broken_import:Never): ModuleNotFoundError" in \
        table["broken-import"]
    assert all(" failed " in table[n] for n in BROKEN)
    hint = [line for line in proc.stdout.splitlines() if line.startswith("to run without")]
    assert hint and all(n in hint[0] for n in BROKEN), proc.stdout


@pytest.mark.parametrize("name", list(BROKEN))
def test_controller_refuses_to_start_with_a_broken_plugin(
        broken: dict[str, Path], name: str, tmp_path: Path) -> None:
    """One line naming the plugin and how to run without it; nothing started (it never got
    as far as the kubeconfig, which does not exist)."""
    args = ["controller", "--insecure", f"--kubeconfig={tmp_path / 'none'}"]
    proc = tote([broken[name]], *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tote controller: plugin {name}: "), lines
    assert f"--plugins-disabled {name}" in lines[0]
    # Turned off, the same install gets past the plugins (and fails on the kubeconfig).
    proc = tote([broken[name]], *args, f"--plugins-disabled={name}")
    assert proc.returncode != 0 and f"controller: plugin {name}" not in proc.stderr
    assert "cannot load Kubernetes configuration" in proc.stderr, proc.stderr


def test_one_source_decides_what_is_disabled(acme: Path, tmp_path: Path) -> None:
    """flag > TOTE_PLUGINS_DISABLED > config file, never a union; tote plugins and the
    loader agree (the reason says which source)."""
    cfg = tmp_path / "tote.yaml"
    cfg.write_text("plugins:\n  disabled: [inheritance]\n")
    env = {"TOTE_PLUGINS_DISABLED": "acme-first"}
    got = rows(tote([acme], "plugins", "--json", f"--config={cfg}", env=env))
    assert got["acme-first"]["state"] == "disabled"
    assert got["acme-first"]["reason"] == "disabled by TOTE_PLUGINS_DISABLED"
    assert got["inheritance"]["state"] == "enabled"  # the file lost to the environment
    got = rows(tote([acme], "plugins", "--json", f"--config={cfg}",
                    "--plugins-disabled=webhook", env=env))
    assert got["webhook"]["reason"] == "disabled by --plugins-disabled"
    assert got["acme-first"]["state"] == got["inheritance"]["state"] == "enabled"
    got = rows(tote([acme], "plugins", "--json", f"--config={cfg}"))
    assert got["inheritance"]["reason"] == f"disabled by plugins.disabled in {cfg}"


def test_plugin_settings_from_every_source(acme: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tote.yaml"
    cfg.write_text("plugins:\n  acme-first:\n    greeting: from-file\n    zones: [a, b]\n"
                   "    timeout: 1m\n")
    proc = tote([acme], "plugins", "--json", f"--config={cfg}", "--acme-first-timeout=90s",
                env={"TOTE_ACME_FIRST_GREETING": "from-env"})
    assert proc.returncode == 0, proc.stderr
    settings = {s["name"]: s for s in rows(proc)["acme-first"]["settings"]}
    assert (settings["greeting"]["value"], settings["greeting"]["source"]) == \
        ("from-env", "TOTE_ACME_FIRST_GREETING")
    assert (settings["timeout"]["value"], settings["timeout"]["source"]) == \
        (90.0, "the command line")
    assert settings["zones"]["value"] == ["a", "b"]
    assert settings["zones"]["source"] == f"config file {cfg} (plugins.acme-first.zones)"
    assert settings["timeout"]["flag"] == "--acme-first-timeout"
    assert settings["greeting"]["help"] == "what acme says"
    assert settings["timeout"]["type"] == "Duration" and settings["timeout"]["default"] == 5.0


@pytest.mark.parametrize(("args", "env", "file", "line"), [
    (["--acme-first-timeout=soon"], {}, "",
     "plugin acme-first: invalid value for --acme-first-timeout: not a duration: 'soon'"),
    ([], {"TOTE_ACME_FIRST_TIMEOUT": "soon"}, "",
     "plugin acme-first: invalid value for --acme-first-timeout (from "
     "TOTE_ACME_FIRST_TIMEOUT): not a duration"),
    ([], {}, "plugins:\n  acme-first:\n    greeting: shout\n",
     "plugin acme-first: invalid settings: --acme-first-greeting: no shouting"),
    ([], {}, "plugins:\n  acme-first:\n    greetng: hi\n",
     "plugin acme-first: unknown setting 'greetng' in config file {cfg} "
     "(plugins.acme-first.greetng); did you mean 'greeting'?"),
    ([], {}, "plugins:\n  nosuch:\n    a: 1\n",
     "config file {cfg}: plugins.nosuch: no plugin named 'nosuch' is installed"),
    ([], {}, "acme-first-greeting: hi\n",
     "config file {cfg}: acme-first-greeting is a setting of plugin acme-first; write it as "
     "plugins: {{acme-first: {{greeting: …}}}}"),
    (["--acme-first-greting=hi"], {}, "",
     "unrecognized arguments: --acme-first-greting=hi; did you mean '--acme-first-greeting'?"),
    (["--plugins-disabled=containerd"], {}, "",
     "--plugins-disabled names plugins that are not installed: containerd (now called "
     "agent)"),
])
def test_bad_plugin_settings_are_one_line(acme: Path, tmp_path: Path, args: list[str],
                                          env: dict[str, str], file: str, line: str) -> None:
    cfg = tmp_path / "tote.yaml"
    cfg.write_text(file)
    proc = tote([acme], "controller", "--insecure", f"--kubeconfig={tmp_path / 'none'}",
                 *args, *([f"--config={cfg}"] if file else []), env=env)
    assert proc.returncode == 2, proc.stderr
    (got,) = proc.stderr.strip().splitlines()
    assert line.format(cfg=cfg) in got, got


def test_a_disabled_plugins_flags_are_accepted(acme: Path, tmp_path: Path) -> None:
    """Disabling a plugin never breaks a command line written for it (the chart renders
    built-ins' flags whatever plugins.disabled says)."""
    proc = tote([acme], "plugins", "--json", "--plugins-disabled=acme-first",
                "--acme-first-greeting=ignored", "--no-acme-first-whatever",
                "--acme-first-zones", "a,b")
    assert proc.returncode == 0, proc.stderr
    assert rows(proc)["acme-first"]["state"] == "disabled"


def test_a_third_party_first_result_answers_before_the_built_ins(
        acme: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(acme))
    host = PluginHost()
    host.load()
    order = [p.name for p in host.plugins]
    assert order.index("acme-first") > order.index("source-policy")  # registered after
    incident = Incident(namespace="ns", pod_name="p", pod_uid="u", container="c",
                        init_container=False, image_ref="docker.io/library/x:1",
                        digest="sha256:" + "1" * 64, node_name="t", kind="pull", message="")
    candidates = [NodeInfo(name=n, ready=True, zone="z") for n in ("a", "b", "c")]
    target = NodeInfo(name="t", ready=True, zone="z")
    answer = trio.run(host.select_source, incident, candidates, target)
    assert answer == ["c", "b", "a"]  # acme's, not source-policy's ["a", "b", "c"]
