"""`tote plugin init NAME`: the package it writes installs and its own tests pass as written,
on tote's pytest plugin; a bad name or directory is one line and writes nothing.

The package is installed the way its README says, offline: pip builds it with this
environment's setuptools (`--no-build-isolation`, `--no-deps`, `--no-index`) into a directory
of its own (`--target`), which the test run puts on PYTHONPATH — so its entry point in group
`tote` is discoverable there without touching this environment's plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tote_core import cli


def test_the_package_installs_and_its_tests_pass(tmp_path: Path) -> None:
    assert cli.main(["plugin", "init", "acme-note", "--dir", str(tmp_path)]) == 0
    project = tmp_path / "tote-acme-note"
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "tote-acme-note"
    assert meta["project"]["dependencies"] == ["tote-salvage>=0.1"]
    assert meta["project"]["entry-points"]["tote"] == {
        "acme-note": "tote_acme_note.plugin:Plugin"}
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-index", "--no-build-isolation", "--target", str(site), str(project)],
        check=True, capture_output=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOTE_", "PYTEST_"))}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
        env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "5 passed" in run.stdout, run.stdout


@pytest.mark.parametrize(("args", "error"), [
    (["Acme"], "'Acme' is not a plugin name: use lowercase letters and digits"),
    (["1acme"], "'1acme' is not a plugin name"),
    (["acme--note"], "'acme--note' is not a plugin name"),
    (["acme.note"], "'acme.note' is not a plugin name"),
    (["config"], "'config' is reserved"),
    (["agent"], "'agent' is already the name of an installed plugin "
                "(tote_containerd.plugin:AgentPlugin, from tote"),
    (["acme", "--dir", "missing"], "--dir {tmp}/missing: not an existing directory"),
    (["taken"], "{tmp}/tote-taken already exists; remove it or choose another --dir"),
])
def test_bad_input_is_one_line_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    (tmp_path / "tote-taken").mkdir()
    argv = ["plugin", "init", *args]
    if "--dir" in args:
        argv[argv.index("--dir") + 1] = str(tmp_path / args[args.index("--dir") + 1])
    else:
        argv += ["--dir", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tote plugin: " + error.format(tmp=tmp_path)), err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tote-taken"]
    assert list((tmp_path / "tote-taken").iterdir()) == []
