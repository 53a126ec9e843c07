"""`tote` finds the subcommands plugins bring through the entry-point group `tote.commands`.

Tried: `tote --help` (the agent listed from its entry point, in the order it always had);
`tote agent --help` through that entry point; a plugin command whose module cannot be
imported (one line, exit 2, and `tote --help` says why); a plugin entry point taking a core
subcommand's name (core's wins); an unknown command.
"""

from __future__ import annotations

from importlib import metadata

import pytest

from tote_core import cli


def _fake_group(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    eps = metadata.EntryPoints(
        metadata.EntryPoint(name, value, cli.COMMAND_GROUP) for name, value in targets.items())
    monkeypatch.setattr(cli.metadata, "entry_points", lambda **kw: eps.select(**kw))


def test_help_lists_the_agent_from_its_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "usage: tote [--version] {controller,agent,plugins,plugin,status,doctor,disable,enable} "
        "[flags]")
    assert "  agent       run the node agent (containerd access, transfers)\n" in out


def test_agent_help_goes_through_the_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    ep, = metadata.entry_points(group=cli.COMMAND_GROUP, name="agent")
    assert ep.value == "tote_containerd.agent.__main__:main"
    with pytest.raises(SystemExit) as exc:
        cli.main(["agent", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tote agent")
    assert "--containerd-socket VALUE" in out and "containerd gRPC socket" in out


def test_a_command_that_cannot_be_loaded_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _fake_group(monkeypatch, broken="tote_no_such_module.cmd:main")
    assert cli.main(["broken", "--x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tote broken: cannot load the 'broken' command "
                          "(tote_no_such_module.cmd:main): No module named")
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["--help"]) == 0
    assert "  broken      (cannot be loaded: No module named" in capsys.readouterr().out


def test_core_commands_cannot_be_taken_and_unknown_ones_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _fake_group(monkeypatch, controller="tote_no_such_module.cmd:main")
    assert cli.plugin_command("controller") is None
    assert list(cli.commands()) == ["controller", "plugins", "plugin", "status", "doctor",
                                    "disable", "enable"]
    assert cli.main(["agent"]) == 2  # not brought by any plugin here
    assert capsys.readouterr().err == \
        "tote: unknown command 'agent'; try: controller, plugins, plugin, status, doctor, " \
        "disable, enable\n"
