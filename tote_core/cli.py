"""The `tote` command.

Core's subcommands: `controller`, `plugins`, `plugin init` (a new plugin package),
`status`, `doctor`, `disable`, `enable`; `--version`. A subcommand a plugin brings (the
node agent: `agent`, from tote_containerd) is found through the entry-point group
`tote.commands`, never imported here: its entry point names a
`main(argv) -> int` whose docstring's first line is its `tote --help` line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

import msgspec
import trio

from tote_core import __version__, logs, tlsfiles
from tote_core.errors import ConfigError, leaves
from tote_core.settings import ControllerSettings
from tote_core.signals import until_signalled

log = logging.getLogger("tote")


def _controller(argv: Sequence[str]) -> int:
    from tote_core.hooks import loading

    loaded = loading.load(ControllerSettings, argv, "tote controller")
    settings: ControllerSettings = loaded.settings
    logs.setup(settings.log_format, settings.log_level)
    # Fail closed before anything starts: unusable TLS material, or none without
    # --insecure, is a one-line error and exit code 2, never a failure recorded later.
    # With --tls-issue-secrets the files do not exist yet: the controller writes them from
    # the Secrets it issues, then checks them the same way before anything listens.
    if settings.tls_issue_secrets:
        log.info("certificates: this controller issues and renews them (Secrets %s-*)",
                 settings.tls_issue_secrets)
    elif not tlsfiles.check_mtls(settings):
        log.warning("INSECURE MODE: mTLS to agents is off (--insecure); anyone on the network "
                    "can talk to the agents. Never run like this in a cluster.")
    if settings.admission_address and not settings.tls_issue_secrets:
        tlsfiles.check_pair(settings.admission_tls_cert, settings.admission_tls_key,
                            cert_flag="--admission-tls-cert", key_flag="--admission-tls-key")
    from tote_core.components.manager import Controller

    for info in loaded.host.plugins:
        log.info("plugin %s (%s) %s", info.name, info.module,
                 "loaded" if info.enabled else info.reason or info.state)
    controller = Controller(settings, host=loaded.host)
    log.info("tote %s controller starting (identity %s, namespace %s, enabled=%s)",
             __version__, controller.identity, controller.namespace, settings.enabled)
    trio.run(until_signalled, controller.run)
    return 0


def _plugins(argv: Sequence[str]) -> int:
    """`tote plugins`: what `tote controller` with the same flags, environment and config
    file would load — always a table, even when a plugin is broken (its row says why)."""
    from tote_core.hooks import listing, loading

    def own(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    loaded = loading.load(ControllerSettings, argv, "tote plugins", extra=own, strict=False)
    infos = loaded.host.plugins
    if loaded.args.json:
        sys.stdout.write(msgspec.json.encode(infos).decode() + "\n")
    else:
        listing.render(infos, sys.stdout)
    unknown = loaded.host.unknown_disabled_error("the disabled list")
    if unknown is not None:
        print(f"note: {unknown}", file=sys.stderr)
    if loaded.core_error:
        print(f"note: tote controller would refuse these settings: {loaded.core_error}",
              file=sys.stderr)
    return 1 if any(p.state == "failed" for p in infos) else 0


def _status(argv: Sequence[str]) -> int:
    from tote_core.status import command as status_command

    return status_command.run(argv)


def _doctor(argv: Sequence[str]) -> int:
    # Distinct names: mypy binds a function-local `command` import once per module.
    from tote_core.doctor import command as doctor_command

    return doctor_command.run(argv)


def _disable(argv: Sequence[str]) -> int:
    from tote_core.killswitch import command as switch_command

    return switch_command.run(argv, enable=False)


def _enable(argv: Sequence[str]) -> int:
    from tote_core.killswitch import command as switch_command

    return switch_command.run(argv, enable=True)


def _plugin(argv: Sequence[str]) -> int:
    from tote_core.plugin_template import command as template_command

    return template_command.run(argv)


Command = Callable[[Sequence[str]], int]

# The programs (daemons) come first in `tote --help`, then the commands plugins bring, then
# the tools.
PROGRAMS: dict[str, tuple[Command, str]] = {
    "controller": (_controller, "run the controller (detection, salvage orchestration)"),
}
TOOLS: dict[str, tuple[Command, str]] = {
    "plugins": (_plugins, "list plugins and where they come from"),
    "plugin": (_plugin, "create a plugin package: tote plugin init NAME [--dir DIR]"),
    "status": (_status, "live incidents and transfers from the controller's status feed"),
    "doctor": (_doctor, "check a live install; non-zero exit on any failure"),
    "disable": (_disable, "turn salvage off at runtime (--reason required; recorded)"),
    "enable": (_enable, "turn salvage back on at runtime"),
}
COMMAND_GROUP = "tote.commands"


def plugin_command(name: str) -> tuple[Command, str] | None:
    """The subcommand `name` a plugin brings through `tote.commands` (its `main(argv)` and
    the first line of its docstring), None when no plugin brings it. A core subcommand's name
    cannot be taken by a plugin. A command that cannot be loaded is a `ConfigError`."""
    if name in PROGRAMS or name in TOOLS:
        return None
    for ep in metadata.entry_points(group=COMMAND_GROUP, name=name):
        try:
            func = ep.load()
        except Exception as exc:  # an import error of the plugin, whatever its kind
            raise ConfigError(f"cannot load the {name!r} command ({ep.value}): {exc}") from exc
        helptext = (func.__doc__ or "").strip().splitlines()
        return func, (helptext[0] if helptext else "")
    return None


def commands() -> dict[str, str]:
    """Every subcommand's `tote --help` line, in that order; a plugin's command that cannot
    be loaded says why there."""
    brought: dict[str, str] = {}
    for name in sorted({ep.name for ep in metadata.entry_points(group=COMMAND_GROUP)}):
        try:
            found = plugin_command(name)
        except ConfigError as exc:
            brought[name] = f"(cannot be loaded: {exc.__cause__})"
            continue
        if found is not None:
            brought[name] = found[1]
    return ({n: h for n, (_, h) in PROGRAMS.items()} | brought
            | {n: h for n, (_, h) in TOOLS.items()})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        every = commands()
        print(f"usage: tote [--version] {{{','.join(every)}}} [flags]\n")
        for name, helptext in every.items():
            print(f"  {name:<12}{helptext}")
        return 0 if args else 2
    if args[0] == "--version":
        print(f"tote {__version__}")
        return 0
    # The process's edge: a configuration error, however deep in nurseries it was raised,
    # is one line and exit status 2.
    status = 2
    try:
        status = _dispatch(args)
    except* ConfigError as group:
        print(f"tote {args[0]}: {leaves(group)[0]}", file=sys.stderr)
        status = 2
    except* KeyboardInterrupt:
        status = 130
    return status


def _dispatch(args: list[str]) -> int:
    command = PROGRAMS.get(args[0]) or TOOLS.get(args[0]) or plugin_command(args[0])
    if command is None:
        print(f"tote: unknown command {args[0]!r}; try: {', '.join(commands())}",
              file=sys.stderr)
        return 2
    return command[0](args[1:])

if __name__ == "__main__":
    sys.exit(main())
