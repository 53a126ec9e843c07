"""The node agent program: `tote agent ARGS` (entry point `tote.commands:agent`) and
`python -m tote_containerd.agent ARGS` (used by tests) both run `main`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import trio

from tote_containerd.agent.settings import AgentSettings
from tote_core import logs
from tote_core.errors import ConfigError, single_leaf
from tote_core.settings_loader import parse_args
from tote_core.signals import until_signalled


def main(argv: Sequence[str] | None = None) -> int:
    """run the node agent (containerd access, transfers)"""
    try:
        settings: AgentSettings = parse_args(AgentSettings,
                                             sys.argv[1:] if argv is None else argv,
                                             "tote agent")
    except ConfigError as exc:
        print(f"tote agent: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_format, settings.log_level)  # the same set-up as the controller

    from tote_containerd.agent.daemon import run

    async def _main() -> None:
        await run(settings)

    try:
        trio.run(until_signalled, _main)
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
