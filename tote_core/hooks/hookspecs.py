"""Every hook tote calls: when, in which process, broadcast or first-result, whose deadline.

Specs are grouped by phase (start-up, detection, salvage, outcome, upkeep, doctor), each
docstring in one template: summary; the arguments; what a return value means;
**first-result** (the first non-None answer wins, later implementations are not called) or
**broadcast** (every implementation is called, results are ignored); **process** (all hooks
run in the controller process, inside a reconcile or salvage worker unless said otherwise —
the upkeep hooks in the reaper, doctor's in `tote doctor`); **sync or
async** (any implementation may be `async def`; the host awaits it before pluggy sees the
result, so an awaited None still passes to the next plugin); **deadline** (whose
`trio.fail_after` bounds the call — implementations take no timeout of their own).

Calling order, `tryfirst`/`trylast`, wrappers (`@hookimpl(wrapper=True)`, a generator that
yields once and returns the — possibly replaced — result) and first-result are pluggy's own;
see `tote_core.hooks.host` for the two things the host adds: awaiting coroutines and
isolating failures. A raising implementation is logged at ERROR with its traceback, counted
in `tote_plugin_failures_total{plugin,hook}` and skipped; the incident continues. The two
exceptions are `transfer`, whose `RetryLater` / `PermanentError` are control flow, and
`push_image`, whose `RegistryError` the push worker reports.

Implementations may declare any subset of a spec's arguments, by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    from tote_core.settings import ControllerSettings
    from tote_core.structs.kube import Pod

PROJECT = "tote"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# -- start-up -----------------------------------------------------------------------------


@hookspec
def configure(context: PluginContext) -> None:
    """Set the plugin up from the controller's settings and clients.

    :param context: typed settings, Kubernetes client and informer caches; `add_service` to
        register long-running work (the host starts it in the controller's leader-only
        nursery — plugins never start tasks or threads themselves); `notify` to emit a
        notification through the host.

    Broadcast. Called once, at controller start-up, before informers sync and before any
    other hook. Sync or async. Deadline: none (start-up); keep it quick, do I/O in a service.
    """


# -- detection ----------------------------------------------------------------------------


@hookspec(firstresult=True)
def opt_in(query: OptInQuery) -> bool | None:
    """Decide workload opt-in for a pod that lacks `tote.dev/auto-salvage` itself.

    :param query: the pod's namespace, name and ownerReferences.
    :return: True/False to decide, None to pass to the next plugin (no answer = not opted in).

    First-result. Called from a detection reconcile worker, for every reconcile of a failing
    pod without its own annotation. Usually async (owner lookups). Deadline: the reconcile's
    (`--reconcile-timeout`). Built-in: `inheritance` (walks ownerReferences, 2 levels).
    """


@hookspec(firstresult=True)
def resolve_tag(image_ref: str, nodes: list[str]) -> str | None:
    """The digest that one of `nodes` holds for the normalised tagged `image_ref`.

    First-result. Asked after `Node.status.images` had no answer, before any registry lookup,
    from a detection worker. Async. Deadline: the detection's agent deadline (5 s).
    Built-in: `containerd` (agents' ResolveTag).
    """


@hookspec(firstresult=True)
def registry_resolve(image_ref: str, namespace: str, pull_secrets: list[str]) -> str | None:
    """The digest the registry serves for `image_ref` (opt-in, `--registry-resolve`).

    Uses the pod's pull secrets for auth. A digest found here but on no node produces
    `ImageResolvedUncached`. First-result, from a detection worker. Async. Deadline: the
    reconcile's. Built-in: `registry`.
    """


@hookspec(firstresult=True)
def find_image(digest: str, nodes: list[str]) -> list[str] | None:
    """Which of `nodes` hold `digest`, asked of the nodes themselves (agents' ListImages).

    Complements `Node.status.images`, which kubelet caps at 50 images. Implementations fan
    out in parallel and may cache briefly. First-result; None = cannot tell. Called from
    detection and salvage workers. Async. Deadline: the caller's (5 s detection, 10 s
    salvage). Built-in: `containerd`.
    """


@hookspec
def on_detected(incident: Incident) -> None:
    """A new actionable incident (pod UID, container, image) was detected.

    Broadcast; return ignored. Called once per incident, not per reconcile, from a detection
    worker, after the `ImageSalvageable` / `ImageCorrupt` event. Sync or async; must not
    block (enqueue slow work for a service). Deadline: the reconcile's. Built-in: `notify`
    turns it into a `detected` notification.
    """


# -- salvage ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def select_source(
    incident: Incident, candidates: list[NodeInfo], target: NodeInfo
) -> list[str] | None:
    """Order candidate source nodes, best first; the salvage tries them in that order.

    :param incident: what failed (the target node is `incident.node_name`).
    :param candidates: every other node known to hold the digest (ready or not).
    :param target: the failing node (its zone, readiness).
    :return: node names, best first (names not among `candidates` are ignored; leaving a
        candidate out means "never use it"), or None to pass. When no plugin answers, core
        orders ready candidates by name.

    First-result; a wrapper (`@hookimpl(wrapper=True)`) sees and may replace the answer.
    Called from a salvage worker before every attempt. Sync or async. Deadline: the salvage
    job's (`--transfer-timeout` + 60 s). Built-in: `source-policy` (ready, same zone first,
    fewest active transfers).
    """


@hookspec(firstresult=True)
def transfer(
    request: TransferRequest, progress: ProgressCallback
) -> TransferResult | None:
    """Move the image named by `request` into the target node; None = cannot handle it.

    Await `progress(...)` as bytes move. Raise `tote_core.errors.RetryLater` for transient
    failures (source down, stream cut) and `tote_core.errors.PermanentError` for failures
    retrying cannot fix (too large, discarded layers): these are not isolated, they reach
    the salvage engine. First-result, from a salvage worker (at most
    `--max-concurrent-salvages` at once). Async. Deadline: `--transfer-timeout`.
    Built-in: `containerd`.
    """


@hookspec(firstresult=True)
def remove_image(node: str, image_ref: str, digest: str | None) -> bool | None:
    """Remove a stale image record (content missing) on `node`; True when removed.

    First-result, from a salvage worker handling `ImageCorrupt`. Async. Deadline: the salvage
    job's. Built-in: `containerd`.
    """


# -- outcome ------------------------------------------------------------------------------


@hookspec
def on_salvaged(incident: Incident, request: TransferRequest, result: TransferResult) -> None:
    """A transfer succeeded and its SalvageRecord has been marked Completed.

    Broadcast; return ignored; failures are logged and never fail the salvage. Called once
    per completed transfer (per SalvageRecord), from a salvage worker. Sync or async; must
    not block (long work such as a backup push goes to a service). Deadline: the salvage
    job's. Built-in: `registry` (backup push).
    """


@hookspec(firstresult=True)
def push_image(request: PushRequest) -> PushResult | None:
    """Push an image a node holds to a registry (the backup push).

    :return: a `PushResult`, or None = this plugin cannot push from `request.node`.

    First-result. Not isolated: raise `tote_core.errors.RegistryError` on failure; it
    reaches the caller (the push worker reports it as ImagePushFailed), never retried.
    Called by the registry plugin's push worker (after a salvage completed), through
    `PluginContext.host`. Async. Deadline: the push worker's. Built-in: `containerd` (the
    node's agent uploads the blobs from its containerd).
    """


@hookspec
def notify(notification: Notification) -> None:
    """Deliver a notification (webhook, Slack, …): `detected`, `salvaged`, `failed`, `pushed`.

    Broadcast, fire-and-forget: enqueue and return; deliver from a service. The host calls
    it at most once per incident and type (duplicates are dropped before this hook). Called
    from detection and salvage workers, and from plugins through `PluginContext.notify`.
    Sync or async; must not block. Deadline: the caller's. Built-in: `notify` (webhook).
    """


# -- upkeep (the reaper) ------------------------------------------------------------------


@hookspec(firstresult=True)
def registry_serves(image_ref: str, digest: str, namespace: str, pull_secrets: list[str]
                    ) -> bool | None:
    """Whether the registry of `image_ref` serves `digest` again (the manifest, by digest).

    :param image_ref: the reference the pod used (its domain and repository are asked).
    :param digest: the salvaged digest, looked up as `<repository>@<digest>`.
    :param namespace: / :param pull_secrets: the pod's namespace and `imagePullSecrets`
        names (Secrets the controller cannot read are skipped: the lookup goes anonymous).
    :return: True = served; False = not served (not found, or refused); None = cannot tell
        (unreachable, timed out, or this plugin does not look up registries).

    First-result. Called by the reaper (leader only) for pinned SalvageRecords, at most
    a few at once and backed off per record while the answer is not True. Async.
    Deadline: the reaper's per-call deadline (`--registry-resolve-timeout`). Built-in:
    `registry` (HEAD manifest with the pull secrets, `--registry-resolve-ca`,
    `--registry-insecure`).
    """


@hookspec(firstresult=True)
def unpin_image(node: str, digest: str) -> bool | None:
    """Clear CRI's pin label (`io.cri-containerd.pinned`) from every image record of
    `digest` on `node`, so kubelet's image GC may remove the image again.

    :param node: the target node a SalvageRecord names (only nodes tote salvaged onto).
    :param digest: the record's digest; records of other digests are never touched.
    :return: True = no record of `digest` on `node` carries the label any more (also when
        there was nothing to clear); False = the node could not be reached, try again
        later; None = this plugin does not manage `node`'s images.

    First-result. Called by the reaper (leader only, every `--reap-interval`) when the
    registry serves the digest again, when pinning is turned off, and before an expired
    record is deleted (False or None keeps the record for the next cycle). Async. Deadline:
    the reaper's per-call deadline (10 s). Built-in: `containerd` (the node's agent).
    """


# -- doctor -------------------------------------------------------------------------------


@hookspec(firstresult=True)
def node_health(node: str, settings: ControllerSettings, pods: list[Pod]
                ) -> NodeHealth | None:
    """Reach `node`'s agent the way the controller would and report its health.

    :param settings: a `ControllerSettings` holding the TLS files and agent discovery
        settings. :param pods: the agent pods the doctor listed.
    :return: the node's `NodeHealth`, or None = this plugin does not manage node agents.

    First-result; isolated like every hook (a raising implementation answers None, which
    doctor reports as a failed row). **Process:** `tote doctor`, its own process, with no
    `configure` call. Sync or async. Deadline: the doctor's per-node timeout. Built-in:
    `containerd`.
    """
