"""Built-in `registry` plugin: one registry client (`client.py`) serving two features.

- tag resolution (`registry_resolve`, opt-in `--registry-resolve`; `resolve.py`), and the
  same lookup by digest for the reaper (`registry_serves`: may a pinned salvaged image be
  unpinned?), with the same CA, insecure and timeout settings;
- the backup push (`on_salvaged`, opt-in `--backup-registry`; `backup.py`), whose worker the
  host runs as a service.

The entry point names the `plugin` object below; its state is set by `configure` from the
controller's settings. Disabling the plugin (`plugins.disabled: [registry]`) turns off both.
"""

from __future__ import annotations

import socket

from tote_core.hooks.context import PluginContext
from tote_core.hooks.hookspecs import hookimpl
from tote_core.hooks.types import Incident, TransferRequest, TransferResult
from tote_registry.backup import BackupPush
from tote_registry.client import RegistryClient
from tote_registry.resolve import Resolver


class RegistryPlugin:
    def __init__(self) -> None:
        self.resolver: Resolver | None = None
        self.lookup: Resolver | None = None  # registry_serves, whatever --registry-resolve
        self.backup: BackupPush | None = None

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        s = context.settings
        self.resolver = self.backup = None
        self.lookup = Resolver(context.kube, RegistryClient(
            ca_file=s.registry_resolve_ca, insecure=s.registry_insecure,
            timeout=s.registry_resolve_timeout))
        if s.registry_resolve:
            self.resolver = self.lookup
        if s.backup_registry:
            recorder = context.recorder
            if recorder is None:  # embedded use without a manager
                from tote_core.kube.events import EventRecorder

                recorder = EventRecorder(context.kube, instance=s.identity or
                                         socket.gethostname())
            self.backup = BackupPush(
                kube=context.kube, host=context.host, recorder=recorder,
                client=RegistryClient(ca_file=s.backup_registry_ca,
                                      insecure=s.backup_registry_insecure, timeout=30.0),
                destination=s.backup_registry, secret=s.backup_registry_secret,
                namespace=s.namespace, timeout=s.transfer_timeout)
            context.add_service("registry-backup-push", self.backup.run)

    @hookimpl
    async def registry_resolve(self, image_ref: str, namespace: str, pull_secrets: list[str]
                               ) -> str | None:
        if self.resolver is None:
            return None
        return await self.resolver.registry_resolve(image_ref, namespace, pull_secrets)

    @hookimpl
    async def registry_serves(self, image_ref: str, digest: str, namespace: str,
                              pull_secrets: list[str]) -> bool | None:
        if self.lookup is None:
            return None
        # The pods' pull Secrets only with --registry-resolve, the option that grants
        # reading them (the chart's `secrets get`); otherwise the check goes anonymous
        # rather than making requests RBAC refuses.
        secrets = pull_secrets if self.resolver is not None else []
        return await self.lookup.serves(image_ref, digest, namespace, secrets)

    @hookimpl
    async def on_salvaged(self, incident: Incident, request: TransferRequest,
                          result: TransferResult) -> None:
        if self.backup is not None:
            await self.backup.submit(incident, request)


plugin = RegistryPlugin()
