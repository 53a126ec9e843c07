"""Built-in `backup` plugin: after a salvage, push the image to `--backup-registry`
(`backup.py` has the worker; `push_image`, the node side, is the agent plugin's).

A plugin of its own, apart from `registry`, so that its settings read `--backup-registry …`
and `plugins.disabled: [backup]` turns the push off without touching registry lookups.
"""

from __future__ import annotations

import os
import socket
from typing import ClassVar

import msgspec

from tote_core.detect import reference
from tote_core.errors import InvalidReference
from tote_core.hooks.context import PluginContext
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import Incident, TransferRequest, TransferResult
from tote_core.oci.client import RegistryClient
from tote_registry.backup import BackupPush


class BackupSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`--backup-registry*`: where salvaged images are pushed; no registry, no push."""

    registry: str = ""
    registry_secret: str = ""
    registry_insecure: bool = False
    registry_ca: str = ""

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "registry": "HOST[/prefix] to push salvaged images to (digest preserved)",
        "registry_secret": "kubernetes.io/dockerconfigjson Secret (controller namespace) "
                           "with credentials for the backup registry",
        "registry_insecure": "plain HTTP / unverified TLS for the backup registry",
        "registry_ca": "PEM bundle appended to system roots for the backup registry",
    }

    def __post_init__(self) -> None:
        """`HOST[/prefix]` must start with a registry host; its options need it."""
        value = self.registry
        if not value:
            given = [f"--backup-{n.replace('_', '-')}" for n in
                     ("registry_secret", "registry_insecure", "registry_ca") if getattr(self, n)]
            if given:
                raise ValueError(f"{', '.join(given)} given without --backup-registry")
            return
        host = value.split("/", 1)[0]
        try:
            ref = reference.parse(f"{value.rstrip('/')}/x:y")
        except InvalidReference as exc:
            raise ValueError(f"--backup-registry: {value!r} is not HOST[/prefix]: {exc}"
                             ) from None
        prefix = value.split("/", 1)[1] if "/" in value else ""
        if ref.domain != host or "@" in value or value.endswith(":") or ":" in prefix:
            raise ValueError(f"--backup-registry: {value!r} is not HOST[/prefix] (HOST is a "
                             "registry host such as registry.example.com or 10.0.0.5:5000)")
        if self.registry_ca and not os.access(self.registry_ca, os.R_OK):
            raise ValueError(f"--backup-registry-ca: cannot read {self.registry_ca}")


class BackupPlugin:
    def __init__(self) -> None:
        self.backup: BackupPush | None = None

    @hookimpl
    def settings_type(self) -> type[BackupSettings]:
        return BackupSettings

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        s, core = context.settings_for(BackupSettings), context.settings
        self.backup = None
        if not s.registry:
            return
        recorder = context.recorder
        if recorder is None:  # embedded use without a manager
            from tote_core.kube.events import EventRecorder

            recorder = EventRecorder(context.kube, instance=core.identity or
                                     socket.gethostname())
        self.backup = BackupPush(
            kube=context.kube, host=context.host, recorder=recorder,
            client=RegistryClient(ca_file=s.registry_ca, insecure=s.registry_insecure,
                                  timeout=30.0),
            destination=s.registry, secret=s.registry_secret,
            namespace=core.namespace, timeout=core.transfer_timeout)
        context.add_service("registry-backup-push", self.backup.run)

    @hookimpl
    async def on_salvaged(self, incident: Incident, request: TransferRequest,
                          result: TransferResult) -> None:
        if self.backup is not None:
            await self.backup.submit(incident, request)
