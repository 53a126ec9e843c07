"""`tote doctor [--json]`: check a live install and say plainly what is wrong.

Uses the caller's kubeconfig (it must be allowed to read the CRD, Lease, nodes, pods and
webhook configuration and to create SubjectAccessReviews — a cluster admin, typically).
The agent rows come from the controller (its `/agents`, through the service proxy or
`--controller-url`), which reaches every agent with its own identity and network path. Given
the controller's client identity (`--tls-cert/--tls-key/--tls-ca`, or `--insecure` for an
install without mTLS) or `--agent-endpoints`, doctor dials the agents itself instead.
`--tls-secret NAME` checks the expiry of the certificates in that Secret.

Exit status: 0 when every row is ok or warn, 1 when any row failed, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import ClassVar, TextIO

import msgspec
import trio

from tote_core.doctor import checks
from tote_core.hooks import loading
from tote_core.kube import config as kube_config
from tote_core.kube.client import KubeClient
from tote_core.settings import ControllerSettings
from tote_core.settings_loader import load

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


class DoctorSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The controller's settings doctor reads, spelled as on `tote controller`: how to
    reach the agents (the identity; the agent plugin's `--agent-*` come with the plugins)
    and which ConfigMap holds the kill switch."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    insecure: bool = False
    config_map: str = "tote-config"
    plugins_disabled: list[str] = msgspec.field(default_factory=list)

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "tls_cert": "the controller's mTLS identity, to reach agents itself",
        "tls_key": "key of --tls-cert",
        "tls_ca": "CA bundle that signed the agents' identities",
        "insecure": "agents run without mTLS",
    }


def _own_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--json", action="store_true", help="one JSON array of check rows")
    a("--kubeconfig", default="", help="default: $KUBECONFIG, ~/.kube/config")
    a("--namespace", "-n", default="tote-system", help="tote's namespace (default tote-system)")
    a("--service-account", default="tote-controller", help="the controller's ServiceAccount")
    a("--lease", default="tote-controller", help="the leader-election Lease")
    a("--service", default="tote-controller", help="the controller's Service")
    a("--health-port", default="health", help="Service port (name/number) of /readyz")
    a("--controller-url", default="",
      help="reach /readyz at http://HOST:PORT directly instead of the service proxy")
    a("--webhook", default=checks.DEFAULT_WEBHOOK,
      help="ValidatingWebhookConfiguration name (the chart's <namespace>.<fullname>; "
           f"default {checks.DEFAULT_WEBHOOK})")
    a("--tls-secret", default="", help="also check the certificates in this Secret")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Doctor's own arguments, plus `settings` (core's, as the controller would have them)
    and `loaded` (the plugins and their settings), through the loader every subcommand
    uses. The environment is not read: doctor runs from an operator's shell, whose TOTE_*
    variables describe some other process."""
    loaded = loading.load(DoctorSettings, argv, "tote doctor", extra=_own_args, environ={},
                          file_superset=ControllerSettings)
    args = loaded.args
    d: DoctorSettings = loaded.settings
    args.loaded = loaded
    args.settings = load(ControllerSettings, {
        "tls_cert": d.tls_cert, "tls_key": d.tls_key, "tls_ca": d.tls_ca,
        "insecure": d.insecure, "config_map": d.config_map,
        "plugins_disabled": d.plugins_disabled, "namespace": args.namespace}, environ={})
    return args


async def _run(args: argparse.Namespace) -> list[checks.Check]:
    settings: ControllerSettings = args.settings
    loaded: loading.Loaded = args.loaded
    kube = KubeClient(kube_config.load(args.kubeconfig))
    endpoints = any(getattr(v, "endpoints", None) for v in loaded.plugin_settings.values())
    target = checks.Target(
        namespace=args.namespace, service_account=args.service_account, lease=args.lease,
        service=args.service, health_port=args.health_port,
        controller_url=args.controller_url, webhook=args.webhook,
        tls_secret=args.tls_secret, settings=settings,
        agents_via_controller=not (settings.tls_cert or settings.tls_key or settings.tls_ca
                                   or settings.insecure or endpoints))
    try:
        return await checks.run_all(kube, loaded.host, target)
    finally:
        await kube.aclose()


def exit_code(rows: Sequence[checks.Check]) -> int:
    """1 when any row failed; warnings alone leave the exit status 0."""
    return 1 if any(r.status == "fail" for r in rows) else 0


def to_json(rows: Sequence[checks.Check]) -> str:
    """The `--json` output: one array of {check, status, detail, subject} objects."""
    return msgspec.json.encode(list(rows)).decode()


def render_table(rows: Sequence[checks.Check], out: TextIO) -> None:
    """The people view: one table row per check row, then a one-line tally."""
    from rich.table import Table
    from rich.text import Text

    from tote_core.terminal import console as make_console

    table = Table(title="tote doctor", title_justify="left")
    for col in ("CHECK", "SUBJECT", "STATUS", "DETAIL"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.check, r.subject, Text(r.status.upper(), style=_STYLE[r.status]),
                      r.detail)
    console = make_console(out)
    console.print(table)
    n_fail = sum(r.status == "fail" for r in rows)
    n_warn = sum(r.status == "warn" for r in rows)
    console.print(f"{n_fail} failed, {n_warn} warnings, {len(rows) - n_fail - n_warn} ok",
                  style="bold red" if n_fail else "green")


def run(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    args = parse(argv)
    rows = trio.run(_run, args)
    if args.json:
        out.write(to_json(rows) + "\n")
    else:
        render_table(rows, out)
    return exit_code(rows)
