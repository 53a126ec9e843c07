"""Built-in `registry` plugin: registry lookups through core's one client
(`tote_core.oci.client`).

- tag resolution (`registry_resolve`, opt-in `--registry-resolve`; `resolve.py`), and
- the same lookup by digest for the reaper (`registry_serves`: may a pinned salvaged image be
  unpinned?), always on, with the same CA, insecure and timeout settings.

Its settings (`RegistrySettings`, `--registry-*`) are its own, declared through
`settings_type`. The backup push is the separate `backup` plugin of this package
(`backup_plugin.py`), so each can be turned off alone.
"""

from __future__ import annotations

import os
from typing import ClassVar

import msgspec

from tote_core.hooks.context import PluginContext
from tote_core.hooks.hookspecs import hookimpl
from tote_core.oci.client import RegistryClient
from tote_core.values import Duration, check_positive
from tote_registry.resolve import Resolver


class RegistrySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`--registry-*`: how tote asks registries (tag lookups and the reaper's check)."""

    resolve: bool = False
    resolve_timeout: Duration = 5.0
    resolve_ca: str = ""
    insecure: bool = False

    FLAG_HELP: ClassVar[dict[str, str]] = {
        "resolve": "resolve tags in the registry when no node knows the digest",
        "resolve_timeout": "registry lookup timeout (default 5s)",
        "resolve_ca": "PEM bundle appended to system roots for registry lookups",
        "insecure": "plain HTTP / unverified TLS for registry lookups",
    }

    def __post_init__(self) -> None:
        check_positive("registry_resolve_timeout", self.resolve_timeout)
        if self.resolve_ca and not os.access(self.resolve_ca, os.R_OK):
            raise ValueError(f"--registry-resolve-ca: cannot read {self.resolve_ca}")


class RegistryPlugin:
    def __init__(self) -> None:
        self.resolver: Resolver | None = None
        self.lookup: Resolver | None = None  # registry_serves, whatever --registry-resolve

    @hookimpl
    def settings_type(self) -> type[RegistrySettings]:
        return RegistrySettings

    @hookimpl
    def configure(self, context: PluginContext) -> None:
        s = context.settings_for(RegistrySettings)
        self.lookup = Resolver(context.kube, RegistryClient(
            ca_file=s.resolve_ca, insecure=s.insecure, timeout=s.resolve_timeout))
        self.resolver = self.lookup if s.resolve else None

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


plugin = RegistryPlugin()
