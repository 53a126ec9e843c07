"""The node agent program: `tote agent ARGS` (entry point `tote.commands:agent`) and
`python -m tote_containerd.agent ARGS` (used by tests) both run `main`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import trio

from tote_containerd.agent.settings import AgentSettings
from tote_core import logs
from tote_core.errors import ConfigError, leaves, single_leaf
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

    # The process's edge: whatever ended the agent, grouped by the nurseries it crossed,
    # becomes one exit status (and one line for a configuration problem).
    status = 0
    try:
        trio.run(until_signalled, _main)
    except* ConfigError as group:
        print(f"tote agent: {leaves(group)[0]}", file=sys.stderr)
        status = 2
    except* KeyboardInterrupt:
        status = status or 130
    except* BaseException as group:
        # Anything else ended the server: log it and exit non-zero (the kubelet restarts us).
        logging.getLogger("tote.agent").critical("agent crashed: %r", single_leaf(group),
                                                 exc_info=group)
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
