"""The `tote` command: the only place that calls `trio.run`.

Subcommands: `controller`, `agent`, `plugins`, `status`, `doctor`; `--version`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import trio

from tote_core import __version__, logs, tlsfiles
from tote_core.errors import ConfigError
from tote_core.settings import AgentSettings, ControllerSettings, parse_args

log = logging.getLogger("tote")


async def _until_signalled(main: Callable[[], Awaitable[Any]]) -> None:
    """Run `main` until it returns or SIGTERM/SIGINT arrives; then cancel it cleanly."""
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("received %s; shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch_signals)
        await main()
        nursery.cancel_scope.cancel()


def _controller(argv: Sequence[str]) -> int:
    settings: ControllerSettings = parse_args(ControllerSettings, argv, "tote controller")
    logs.setup(settings.log_format, settings.log_level)
    # Fail closed before anything starts (SPEC §11): unusable TLS material, or none without
    # --insecure, is a one-line error and exit code 2, never a failure recorded later.
    if not tlsfiles.check_mtls(settings):
        log.warning("INSECURE MODE: mTLS to agents is off (--insecure); anyone on the network "
                    "can talk to the agents. Never run like this in a cluster.")
    if settings.admission_address:
        tlsfiles.check_pair(settings.admission_tls_cert, settings.admission_tls_key,
                            cert_flag="--admission-tls-cert", key_flag="--admission-tls-key")
    from tote_core.components.manager import Controller
    from tote_core.hooks.host import PluginHost

    host = PluginHost()
    for info in host.load(settings.plugins_disabled):
        log.info("plugin %s (%s) %s", info.name, info.module,
                 "loaded" if info.enabled else f"disabled {info.error}".strip())
    controller = Controller(settings, host=host)
    log.info("tote %s controller starting (identity %s, namespace %s, enabled=%s)",
             __version__, controller.identity, controller.namespace, settings.enabled)
    trio.run(_until_signalled, controller.run)
    return 0


def _agent(argv: Sequence[str]) -> int:
    settings: AgentSettings = parse_args(AgentSettings, argv, "tote agent")
    logs.setup(settings.log_format, settings.log_level)
    try:
        import tote_containerd.agent as agent
    except ImportError as exc:
        raise ConfigError(f"the containerd agent plugin is not installed: {exc}") from exc

    async def main() -> None:
        await agent.run(settings)

    trio.run(_until_signalled, main)
    return 0


def _plugins(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="tote plugins")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--disabled", default="", help="comma list, as plugins.disabled")
    parser.add_argument("--config", default=None)
    args = parser.parse_args(list(argv))
    from tote_core.hooks.host import PluginHost
    from tote_core.settings import load

    disabled = [d for d in args.disabled.split(",") if d]
    if args.config:
        disabled += load(ControllerSettings, {}, config_file=args.config).plugins_disabled
    infos = PluginHost().load(disabled)
    if args.json:
        sys.stdout.write(msgspec.json.encode(infos).decode() + "\n")
        return 0
    rows = [("NAME", "STATE", "SOURCE", "MODULE", "HOOKS")]
    for p in infos:
        state = "loaded" if p.enabled else ("error" if p.error else "disabled")
        source = f"{p.distribution} {p.version}" + (" (built-in)" if p.builtin else "")
        rows.append((p.name, state, source, p.module, ",".join(p.hooks) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for p in infos:
        if p.error:
            print(f"{p.name}: {p.error}", file=sys.stderr)
    return 0


def _status(argv: Sequence[str]) -> int:
    from tote_core.status import command as status_command

    return status_command.run(argv)


def _doctor(argv: Sequence[str]) -> int:
    # Distinct names: mypy binds a function-local `command` import once per module.
    from tote_core.doctor import command as doctor_command

    return doctor_command.run(argv)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "controller": (_controller, "run the controller (detection, salvage orchestration)"),
    "agent": (_agent, "run the node agent (containerd access, transfers)"),
    "plugins": (_plugins, "list plugins and where they come from"),
    "status": (_status, "live incidents and transfers from the controller's status feed"),
    "doctor": (_doctor, "check a live install; non-zero exit on any failure"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(f"usage: tote [--version] {{{','.join(COMMANDS)}}} [flags]\n")
        for name, (_, helptext) in COMMANDS.items():
            print(f"  {name:<12}{helptext}")
        return 0 if args else 2
    if args[0] == "--version":
        print(f"tote {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"tote: unknown command {args[0]!r}; try: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return command[0](args[1:])
    except ConfigError as exc:
        print(f"tote {args[0]}: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # trio nurseries wrap errors in groups; a configuration error is still just that.
        matched, _ = group.split(ConfigError)
        if matched is None:
            raise
        print(f"tote {args[0]}: {_first_leaf(matched)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
