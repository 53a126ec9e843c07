"""Every hook tote calls, with when, where and how it is called.

pluggy calls hook implementations synchronously. Any implementation may be `async def`: the
host (`tote_core.hooks.host`) awaits the coroutine it returns. For `firstresult` hooks the
host walks implementations itself in pluggy's order and stops at the first non-None *awaited*
result. A raising implementation is logged with its plugin name, counted
(`tote_plugin_failures_total{plugin,hook}`) and skipped; the incident continues.

All hooks below run in the controller process unless said otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from tote_core.hooks.types import (
    Incident,
    NodeHealth,
    NodeInfo,
    Notification,
    OptInQuery,
    ProgressCallback,
    PushRequest,
    PushResult,
    TransferRequest,
    TransferResult,
)

if TYPE_CHECKING:
    from tote_core.hooks.context import PluginContext

PROJECT = "tote"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def configure(context: PluginContext) -> Any:
    """Called once at controller start-up, before any other hook.

    `context` holds the settings, the Kubernetes client and read-only caches, and lets the
    plugin register long-running tasks (`context.add_service`) that the host starts in the
    controller's nursery — plugins never start tasks or threads themselves. Broadcast.
    """


@hookspec(firstresult=True)
def opt_in(query: OptInQuery) -> bool | None:
    """Decide workload opt-in for a pod that lacks `tote.dev/auto-salvage` itself.

    Return True/False to decide, None to pass. The built-in inheritance plugin walks
    ownerReferences. Called from a reconcile worker, under the reconcile deadline.
    """


@hookspec
def on_detected(incident: Incident) -> None:
    """A new incident (pod UID, container, digest) was detected. Broadcast; return ignored.

    Called once per incident, not per reconcile.
    """


@hookspec(firstresult=True)
def select_source(incident: Incident, candidates: list[NodeInfo]) -> list[str] | None:
    """Order candidate source nodes, best first; the engine tries them in that order.

    Return None to let the next plugin (or the built-in default) decide.
    """


@hookspec(firstresult=True)
def transfer(
    request: TransferRequest, progress: ProgressCallback
) -> TransferResult | None:
    """Move the image named by `request` into the target node. firstresult.

    Called from a salvage worker (bounded by `--max-concurrent-salvages`) under the
    caller's deadline. Await `progress(...)` as bytes move. Raise
    `tote_core.errors.RetryLater` for transient failures (source down, stream cut) and
    `tote_core.errors.PermanentError` for failures retrying cannot fix (too large,
    discarded layers). Return None if this plugin cannot handle the request.
    """


@hookspec(firstresult=True)
def find_image(digest: str, nodes: list[str]) -> list[str] | None:
    """Which of `nodes` hold `digest`, asked of the nodes themselves (agents' ListImages).

    Complements `Node.status.images`, which kubelet caps at 50 images. Implementations fan
    out in parallel under a deadline and may cache briefly. firstresult; None = cannot tell.
    """


@hookspec(firstresult=True)
def resolve_tag(image_ref: str, nodes: list[str]) -> str | None:
    """The digest that one of `nodes` holds for the normalised tagged `image_ref`.

    Asked after `Node.status.images` had no answer, before any registry lookup.
    """


@hookspec(firstresult=True)
def registry_resolve(image_ref: str, namespace: str, pull_secrets: list[str]) -> str | None:
    """The digest the registry serves for `image_ref` (opt-in, `--registry-resolve`).

    Uses the pod's pull secrets for auth. A digest found here but on no node produces
    `ImageResolvedUncached`.
    """


@hookspec(firstresult=True)
def remove_image(node: str, image_ref: str, digest: str | None) -> bool | None:
    """Remove a stale image record (content missing) on `node`; True when removed."""


@hookspec
def on_salvaged(incident: Incident, request: TransferRequest, result: TransferResult) -> None:
    """A transfer succeeded. Broadcast; failures are logged and never fail the salvage."""


@hookspec(firstresult=True)
def push_image(request: PushRequest) -> PushResult | None:
    """Push an image a node holds to a registry (the backup push, SPEC §7). firstresult.

    Called by the registry plugin's push worker (after a salvage completed), under its
    deadline. The built-in containerd plugin has `request.node`'s agent upload the blobs from
    its containerd. Raise `tote_core.errors.RegistryError` on failure; never retried.
    """


@hookspec
def notify(notification: Notification) -> None:
    """Deliver a notification (webhook, Slack, …). Broadcast, fire-and-forget."""


@hookspec(firstresult=True)
def node_health(node: str, settings: Any, pods: list[Any]) -> NodeHealth | None:
    """Reach `node`'s agent the way the controller would and report its health.

    Called by `tote doctor` (its own process, no `configure` call): `settings` is a
    `ControllerSettings` holding the TLS files and agent discovery settings, `pods` the agent
    pods listed by the doctor. The caller sets the deadline. firstresult; None = this plugin
    does not manage node agents.
    """
