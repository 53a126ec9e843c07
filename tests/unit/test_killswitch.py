"""The kill switch's one reading (tote_core/killswitch), its CLI's input checks, and how
`tote status` (board → feed → watch → view) and `tote doctor` show it. The API calls of
`tote disable`/`tote enable` are tested against a real API server in
tests/integration/test_kill_switch.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio
from rich.console import Console
from trio_websocket import open_websocket_url

from tote_core import cli, killswitch
from tote_core.components.statusfeed import StatusFeed
from tote_core.doctor import checks
from tote_core.errors import ConfigError
from tote_core.killswitch import command
from tote_core.status import command as status_command
from tote_core.status.board import StatusBoard
from tote_core.status.view import render
from tote_core.structs.status import Hello, Message, Switch, Synced

NS, CM = "tote-system", "tote-config"


def read(data: dict[str, str] | None, default: bool = True) -> Switch:
    return killswitch.read(data, default=default, namespace=NS, name=CM)


def recorded(enabled: str, **extra: str) -> dict[str, str]:
    return {"enabled": enabled, "changedTo": enabled, "changedBy": "alice",
            "changedAt": "2026-12-06T10:00:00Z", **extra}


def test_no_configmap_or_no_key_leaves_it_to_the_flag() -> None:
    for data in (None, {}, {"other": "x"}):
        assert read(data, default=False) == Switch(enabled=False, source="flag",
                                                   config_map=f"{NS}/{CM}")
        assert read(data, default=True).enabled is True


@pytest.mark.parametrize(("word", "on"), [("false", False), ("off", False), ("0", False),
                                          ("TRUE", True), ("yes", True), ("1", True)])
def test_a_written_value_wins_over_the_flag_either_way(word: str, on: bool) -> None:
    assert read({"enabled": word}, default=not on).enabled is on


def test_the_record_is_shown_with_the_value_it_describes() -> None:
    sw = read(recorded("false", reason="registry migration"))
    assert (sw.enabled, sw.source, sw.changed_by, sw.reason) == (
        False, "configmap", "alice", "registry migration")
    assert killswitch.describe(sw) == ("salvage DISABLED by alice since 2026-12-06T10:00:00Z: "
                                       "registry migration")
    assert killswitch.event_of(sw) == ("SalvageDisabled", "by alice at 2026-12-06T10:00:00Z: "
                                       "registry migration")
    on = read(recorded("true"))
    assert killswitch.describe(on) == "salvage enabled by alice since 2026-12-06T10:00:00Z"
    assert killswitch.event_of(on) == ("SalvageEnabled", "by alice at 2026-12-06T10:00:00Z")


def test_a_hand_edit_to_the_other_value_is_not_credited_to_the_last_recorder() -> None:
    data = recorded("false", reason="incident") | {"enabled": "on"}
    sw = read(data)
    assert sw.enabled is True and sw.changed_by == killswitch.HAND_EDIT
    assert sw.reason == "" and "alice" not in killswitch.describe(sw)


def test_an_unparseable_value_keeps_salvage_off_and_says_why() -> None:
    sw = read({"enabled": "maybe"}, default=True)
    assert sw.enabled is False and sw.source == "invalid"
    assert "'maybe'" in sw.problem and "salvage stays OFF" in sw.problem
    assert killswitch.describe(sw).startswith("salvage DISABLED: ConfigMap tote-system/")
    assert killswitch.event_of(sw) is None  # InvalidConfiguration reports it instead


# --------------------------------------------------------------------------- the CLI's input


@pytest.mark.parametrize(("argv", "says"), [
    ([], "--reason is required and must not be empty"),
    (["--reason", "   "], "--reason is required and must not be empty"),
    (["--reason", "two\nlines"], "--reason must be one line"),
    (["--reason", "x" * 600], "--reason is 600 characters; keep it under 512"),
    (["--reason", "r", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_disable_refuses_bad_input_in_one_line(argv: list[str], says: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=says):
        command.parse(argv, enable=False)
    assert cli.main(["disable", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tote disable: ") and says in err
    assert len(err.strip().splitlines()) == 1


def test_enable_needs_no_reason_and_defaults_match_the_controller() -> None:
    args = command.parse([], enable=True)
    assert (args.reason, args.namespace, args.config_map) == ("", NS, CM)
    from tote_core.settings import ControllerSettings
    assert ControllerSettings().config_map == command.DEFAULT_CONFIG_MAP


def test_what_the_cli_applies_owns_the_switch_and_its_record() -> None:
    body = command.body(NS, CM, enabled=False, who="alice", when="2026-12-06T10:00:00Z",
                        reason="why")
    assert body["data"] == recorded("false", reason="why")
    assert read(body["data"]) == read(recorded("false", reason="why"))
    # enable without a reason: the old reason is not applied, so server-side apply drops it
    assert "reason" not in command.body(NS, CM, enabled=True, who="b", when="t",
                                        reason="")["data"]
    assert "helm" not in str(body["metadata"]).lower()  # never claimed by the chart's release


# --------------------------------------------------------------------------- tote status


async def test_the_feed_sends_the_switch_first_and_every_change() -> None:
    board = StatusBoard()
    board.publish_switch(read(recorded("false", reason="incident 42")))
    async with trio.open_nursery() as nursery:
        feed = StatusFeed(board, "127.0.0.1:0", "ctl-1", is_leader=lambda: True,
                          leader_identity=lambda: "ctl-1")
        port = await nursery.start(feed.run)
        url = f"ws://127.0.0.1:{port}/status"
        seen: list[Message] = []
        end = await status_command.watch(lambda: open_websocket_url(url), follow=False,
                                         on_message=lambda s, m: seen.append(m))
        assert end == "" and [type(m) for m in seen] == [Hello, Switch, Synced]
        assert isinstance(seen[1], Switch) and seen[1].reason == "incident 42"

        _, sub = board.subscribe()
        board.publish_switch(read(recorded("false", reason="incident 42")))  # no change
        board.publish_switch(read(recorded("true")))
        got = sub.receive.receive_nowait()
        assert isinstance(got, Switch) and got.enabled is True
        with pytest.raises(trio.WouldBlock):
            sub.receive.receive_nowait()
        nursery.cancel_scope.cancel()


def test_status_view_shows_the_banner() -> None:
    console = Console(file=io.StringIO(), width=200)
    sw = read(recorded("false", reason="registry migration"))
    console.print(render(Hello(controller="c", version="0", leader=True), [], switch=sw))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "salvage DISABLED by alice since 2026-12-06T10:00:00Z: registry migration" in out


# --------------------------------------------------------------------------- tote doctor


def test_doctor_row() -> None:
    t = checks.Target(namespace=NS)
    off = checks.kill_switch_row(recorded("false", reason="why"), t, None)
    assert off.status == "warn" and off.subject == f"configmap {NS}/{CM}"
    assert off.detail.startswith("salvage DISABLED by alice since 2026-12-06T10:00:00Z: why")
    assert checks.kill_switch_row(recorded("true"), t, None).status == "ok"
    assert checks.kill_switch_row({"enabled": "maybe"}, t, True).status == "fail"
    assert checks.kill_switch_row(None, t, True).status == "ok"
    flag_off = checks.kill_switch_row(None, t, False)
    assert flag_off.status == "warn" and "--enabled=false" in flag_off.detail
    assert checks.kill_switch_row(None, t, None).status == "warn"


def test_status_skips_a_message_type_it_does_not_know() -> None:
    """A newer controller may send kinds this CLI predates (as `switch` once was): skipped,
    while a known kind that is malformed is still an error."""
    assert status_command._decode('{"type":"future","x":1}') is None
    assert isinstance(status_command._decode('{"type":"synced","items":0}'), Synced)
    import msgspec
    with pytest.raises(msgspec.ValidationError):
        status_command._decode('{"type":"synced","items":"many"}')


def test_context_flag_picks_a_kubeconfig_context(tmp_path: Path) -> None:
    from tote_core.kube import config as kube_config
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters:\n- {name: c1, cluster: {server: 'https://127.0.0.1:6443'}}\n"
        "- {name: c2, cluster: {server: 'https://127.0.0.2:6443'}}\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts:\n- {name: a, context: {cluster: c1, user: u, namespace: ns-a}}\n"
        "- {name: b, context: {cluster: c2, user: u, namespace: ns-b}}\n"
        "current-context: a\n")
    assert kube_config.load(str(path)).server == "https://127.0.0.1:6443"
    other = kube_config.load(str(path), "b")
    assert (other.server, other.namespace) == ("https://127.0.0.2:6443", "ns-b")
    with pytest.raises(ConfigError, match="nope"):
        kube_config.load(str(path), "nope")
