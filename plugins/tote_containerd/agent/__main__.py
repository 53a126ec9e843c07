"""`python -m tote_containerd.agent ARGS` — same as `tote agent ARGS` (used by tests)."""

from __future__ import annotations

import logging
import signal
import sys

import trio

from tote_core import logs
from tote_core.errors import ConfigError
from tote_core.settings import AgentSettings, parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        settings: AgentSettings = parse_args(AgentSettings,
                                             sys.argv[1:] if argv is None else argv,
                                             "tote agent")
    except ConfigError as exc:
        print(f"tote agent: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_format, settings.log_level)  # the same set-up as `tote agent`

    from tote_containerd.agent import run

    async def _main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, settings)
                async for _ in signals:
                    logging.getLogger("tote.agent").info("signal received, stopping")
                    nursery.cancel_scope.cancel()
                    break

    from tote_containerd.agent.errors import single_leaf

    try:
        trio.run(_main)
    except BaseException as exc:
        leaf = single_leaf(exc)
        if isinstance(leaf, ConfigError):
            print(f"tote agent: {leaf}", file=sys.stderr)
            return 2
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        # Anything else ended the server: log it and exit non-zero (the kubelet restarts us).
        logging.getLogger("tote.agent").critical("agent crashed: %r", leaf, exc_info=exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
