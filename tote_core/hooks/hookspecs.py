"""Every hook tote calls, one spec each: docs/plugins.md's hook reference is drawn from them.

Specs are grouped by phase (start-up, detection, salvage, outcome, upkeep, doctor). Every
docstring follows one template, which `tote_core.hooks.reference_doc` renders into
docs/plugins.md and tests/unit/test_hook_reference.py enforces (a spec missing a part fails
it):

- a one-line summary, then any paragraphs of detail;
- `:param NAME:` for every argument, and `:return:` (what an answer means, or "ignored");
- `When called:` the moment and how often; `Process:` which process and task (the
  controller's leader, inside a detection or salvage worker or the reaper, unless said
  otherwise); `Sync/async:` (any implementation may be `async def`: the host awaits it
  before pluggy sees the result, so an awaited None still passes to the next plugin);
  `Deadline:` whose `trio.fail_after` / `move_on_after` bounds the call and what expiry
  means (implementations take no timeout of their own); `Built-in:` the built-in plugins
  implementing it, by entry-point name, or `none`. A field's continuation lines are
  indented.

First-result or broadcast is not written here: it is the spec's `firstresult` option, and
the reference reads it from pluggy. Calling order, `tryfirst`/`trylast`, wrappers
(`@hookimpl(wrapper=True)`, a generator that yields once and returns the — possibly
replaced — result) and first-result are pluggy's; see `tote_core.hooks.host` for the two
things the host adds: awaiting coroutines and isolating failures. A raising implementation
is logged at ERROR with its traceback, counted in `tote_plugin_failures_total{plugin,hook}`
and skipped; the incident continues. The two exceptions are `transfer`, whose `RetryLater` /
`PermanentError` are control flow, and `push_image`, whose `RegistryError` the push worker
reports.

Implementations may declare any subset of a spec's arguments, by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pluggy

from tote_core.hooks.types import (
    Incident,
    NodeHealth,
    NodeInfo,
    Notification,
    OptInQuery,
    PluginSettings,
    ProgressCallback,
    PushRequest,
    PushResult,
    TransferRequest,
    TransferResult,
)

if TYPE_CHECKING:
    from tote_core.hooks.context import PluginContext
    from tote_core.kube.client import KubeClient
    from tote_core.settings import ControllerSettings

PROJECT = "tote"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# -- start-up -----------------------------------------------------------------------------


@hookspec
def settings_type() -> type[msgspec.Struct] | None:
    """The msgspec Struct class of this plugin's own settings (None: it has none).

    Asked of each plugin on its own, so a raise names the plugin. Not isolated: a raise, or
    a class that is not a valid settings Struct, stops start-up with a one-line error naming
    the plugin.

    :return: a `msgspec.Struct` subclass, `kw_only=True, forbid_unknown_fields=True`, every
        field with a default; types str, bool, int, float, `tote_core.values.Duration` /
        `Size`, `Literal[...]`, `list[str]` or `dict[str, str]`; an optional class variable
        `FLAG_HELP: ClassVar[dict[str, str]]` (the `--help` text per field) and an optional
        `__post_init__` raising ValueError for checks across fields. Field `name` of plugin
        `p` becomes flag `--p-name`, variable `TOTE_P_NAME`, config-file key
        `plugins: {p: {name: …}}` and chart value `plugins.config.p.name`; the validated
        instance reaches `configure` as `context.settings_for(TheStruct)`.

    When called: once per process, right after loading and before the command line is
        parsed, by every subcommand that loads plugins (`tote controller`, `tote plugins`,
        `tote doctor`).
    Process: each of those, at start-up.
    Sync/async: sync only.
    Deadline: none (start-up).
    Built-in: `agent`, `backup`, `registry`, `source-policy`, `webhook`.
    """


@hookspec
def configure(context: PluginContext) -> None:
    """Set the plugin up: keep what it needs from the context, register its services.

    :param context: the controller's settings (`context.settings`), this plugin's own
        settings (`context.settings_for(MySettings)`), the Kubernetes client, the informer
        caches, `add_service` to register long-running work (the host starts it in the
        leader-only nursery — plugins never start tasks or threads themselves) and `notify`
        to emit a notification through the host.
    :return: ignored.

    When called: once, at controller start-up, before informers sync and before any other
        hook; never in `tote doctor`.
    Process: controller, its start-up task.
    Sync/async: either.
    Deadline: none (start-up); keep it quick and do I/O in a service.
    Built-in: `agent`, `backup`, `inheritance`, `registry`, `source-policy`, `webhook`
        (each reads its own settings).
    """


# -- detection ----------------------------------------------------------------------------


@hookspec(firstresult=True)
def opt_in(query: OptInQuery) -> bool | None:
    """Decide workload opt-in for a pod that lacks the `tote.dev/auto-salvage` annotation.

    :param query: the pod's namespace, name and ownerReferences.
    :return: True (opted in) or False (opted out) to decide, None to pass to the next
        plugin. When no plugin answers, the pod is not opted in.

    When called: on every detection reconcile of a failing pod without its own annotation.
    Process: controller (leader), a detection reconcile worker.
    Sync/async: usually async (owner lookups).
    Deadline: the reconcile's (`--reconcile-timeout`); expiry fails the reconcile, which is
        retried with back-off.
    Built-in: `inheritance` (walks ownerReferences, 2 levels).
    """


@hookspec(firstresult=True)
def resolve_tag(image_ref: str, nodes: list[str]) -> str | None:
    """The digest that one of `nodes` holds for the tagged `image_ref`.

    :param image_ref: the normalised, tagged reference the pod asked for
        (`docker.io/library/nginx:1.25`).
    :param nodes: the names of every node the controller knows.
    :return: a digest (`sha256:…`), or None = no node holds the tag, or cannot tell.

    When called: in detection, when no node's `status.images` has a digest for the tag;
        before any registry lookup.
    Process: controller (leader), a detection reconcile worker.
    Sync/async: async in practice (asks the nodes).
    Deadline: 5 s (`move_on_after`: expiry counts as no answer), inside the reconcile's.
    Built-in: `agent` (the agents' image records, ListImages).
    """


@hookspec(firstresult=True)
def registry_resolve(image_ref: str, namespace: str, pull_secrets: list[str]) -> str | None:
    """The digest the registry serves for the tagged `image_ref`.

    A digest found here but held by no node produces the `ImageResolvedUncached` event.

    :param image_ref: the normalised, tagged reference the pod asked for.
    :param namespace: the pod's namespace (where its pull Secrets are).
    :param pull_secrets: the pod's `imagePullSecrets` names, for the registry's auth.
    :return: a digest, or None = cannot tell.

    When called: in detection, only with `--registry-resolve`, when `resolve_tag` had no
        answer.
    Process: controller (leader), a detection reconcile worker.
    Sync/async: async in practice (registry HTTP).
    Deadline: the reconcile's (`--reconcile-timeout`); expiry fails the reconcile, which
        is retried with back-off.
    Built-in: `registry` (manifest lookup with the pull secrets).
    """


@hookspec(firstresult=True)
def find_image(digest: str, nodes: list[str]) -> list[str] | None:
    """Which of `nodes` hold `digest`, asked of the nodes themselves.

    Complements `Node.status.images`, which kubelet caps at 50 images per node.
    Implementations fan out in parallel and may cache briefly.

    :param digest: the image's digest (`sha256:…`).
    :param nodes: the names of every node the controller knows.
    :return: the names of the nodes holding `digest`, or None = cannot tell.

    When called: in detection when no other node's `status.images` lists the digest, and
        at the start of every salvage attempt.
    Process: controller (leader), a detection or salvage worker.
    Sync/async: async in practice (asks the nodes).
    Deadline: 5 s in detection, 10 s in salvage (`move_on_after`: expiry counts as no
        answer).
    Built-in: `agent` (the agents' ListImages).
    """


@hookspec
def on_detected(incident: Incident) -> None:
    """A new actionable incident (pod UID, container, image) was detected.

    :param incident: the failing pod, container, image and digest, the target node and the
        nodes known to hold the digest.
    :return: ignored.

    When called: once per incident (not per reconcile), after the `ImageSalvageable` or
        `ImageCorrupt` event, before the salvage is queued.
    Process: controller (leader), a detection reconcile worker.
    Sync/async: either; must not block (hand slow work to a service).
    Deadline: the reconcile's (`--reconcile-timeout`).
    Built-in: none (core emits the `detected` notification itself).
    """


# -- salvage ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def select_source(
    incident: Incident, candidates: list[NodeInfo], target: NodeInfo
) -> list[str] | None:
    """Order candidate source nodes, best first; the salvage tries them in that order.

    A wrapper (`@hookimpl(wrapper=True)`) receives the answer of the implementations
    called after it and may reorder or filter it.

    :param incident: what failed (the target node is `incident.node_name`).
    :param candidates: every other node known to hold the digest, ready or not.
    :param target: the failing node (its zone, readiness).
    :return: node names, best first (names not among `candidates` are ignored; leaving a
        candidate out means "never use it"), or None to pass. When no plugin answers, core
        orders the ready candidates by name.

    When called: before every salvage attempt.
    Process: controller (leader), a salvage worker.
    Sync/async: either.
    Deadline: the salvage job's (`--transfer-timeout` + 60 s).
    Built-in: `source-policy` (ready, same zone first, fewest active transfers); `agent`
        wraps it (sources holding the layer blobs before those serving snapshots).
    """


@hookspec(firstresult=True)
def transfer(
    request: TransferRequest, progress: ProgressCallback
) -> TransferResult | None:
    """Copy the image named by `request` from its source node into its target node.

    Raise `tote_core.errors.RetryLater` for transient failures (source down, stream cut)
    and `tote_core.errors.PermanentError` for failures retrying cannot fix (too large,
    discarded layers): these two are not isolated, they reach the salvage engine, which
    tries the next source or gives up.

    :param request: the image reference, digest, source and target node, and size limit.
    :param progress: `await progress(TransferProgress(...))` as bytes move; the
        SalvageRecord's status shows it.
    :return: the `TransferResult`, or None = this plugin cannot handle the transfer (with
        no answer at all the salvage fails: no transfer plugin).

    When called: once per source tried, in `select_source`'s order; at most
        `--max-concurrent-salvages` at once.
    Process: controller (leader), a salvage worker.
    Sync/async: async in practice.
    Deadline: `--transfer-timeout` (`fail_after`: expiry is a `RetryLater` for that
        source).
    Built-in: `agent` (agent-to-agent copy by digest).
    """


@hookspec(firstresult=True)
def remove_image(node: str, image_ref: str, digest: str | None) -> bool | None:
    """Remove a stale image record on `node`: kubelet sees the image, its content is gone.

    :param node: the failing node.
    :param image_ref: the record's name (the normalised reference the pod asked for).
    :param digest: the digest the record points at, when known.
    :return: True once removed (core then restarts the pod's pull); False or None = not
        removed (logged).

    When called: when a salvage handles an `ImageCorrupt` incident, at most once a minute
        per node and image.
    Process: controller (leader), a salvage worker.
    Sync/async: async in practice.
    Deadline: the salvage job's (`--transfer-timeout` + 60 s).
    Built-in: `agent`.
    """


# -- outcome ------------------------------------------------------------------------------


@hookspec
def on_salvaged(incident: Incident, request: TransferRequest, result: TransferResult) -> None:
    """A transfer succeeded and its SalvageRecord has been marked Completed.

    :param incident: what had failed.
    :param request: the transfer that fixed it (digest, source and target node).
    :param result: what the transfer reported (bytes, mode, pinned).
    :return: ignored; a failure is logged and never fails the salvage.

    When called: once per completed transfer (per SalvageRecord).
    Process: controller (leader), a salvage worker.
    Sync/async: either; must not block (long work such as a backup push goes to a
        service).
    Deadline: the salvage job's (`--transfer-timeout` + 60 s).
    Built-in: `backup` (queues the backup push).
    """


@hookspec(firstresult=True)
def push_image(request: PushRequest) -> PushResult | None:
    """Push an image a node holds to a registry (the backup push).

    Not isolated: raise `tote_core.errors.RegistryError` on failure; it reaches the caller
    (the push worker reports it as `ImagePushFailed`) and is never retried.

    :param request: the node, digest, registry, repository, tag, authorization and TLS
        options.
    :return: a `PushResult`, or None = this plugin cannot push from `request.node`.

    When called: by the `backup` plugin's push worker, once per completed salvage, through
        `PluginContext.host` (only with `--backup-registry`).
    Process: controller (leader), the `backup` plugin's service.
    Sync/async: async in practice.
    Deadline: the push worker's (`--transfer-timeout`, `fail_after`: expiry fails the
        push).
    Built-in: `agent` (the node's agent uploads the blobs from its containerd).
    """


@hookspec
def notify(notification: Notification) -> None:
    """Deliver a notification (webhook, Slack, pager, …); fire-and-forget.

    Enqueue and return; deliver from a service.

    :param notification: type `detected`, `salvaged`, `failed` or `pushed`, with the pod,
        image, digest, nodes, error and timestamp.
    :return: ignored.

    When called: at most once per incident and type (the host drops repeats before this
        hook): from detection (`detected`), salvage workers (`salvaged`, `failed`) and
        plugins through `PluginContext.notify` (the backup push's `pushed` or `failed`).
    Process: controller (leader), the task that emitted it.
    Sync/async: either; must not block.
    Deadline: the caller's.
    Built-in: `webhook` (JSON or Slack).
    """


# -- upkeep (the reaper) ------------------------------------------------------------------


@hookspec(firstresult=True)
def registry_serves(image_ref: str, digest: str, namespace: str, pull_secrets: list[str]
                    ) -> bool | None:
    """Whether the registry of `image_ref` serves `digest` again (the manifest, by digest).

    :param image_ref: the reference the pod used (its domain and repository are asked).
    :param digest: the salvaged digest, looked up as `<repository>@<digest>`.
    :param namespace: the pod's namespace (where its pull Secrets are).
    :param pull_secrets: the pod's `imagePullSecrets` names (Secrets the controller cannot
        read are skipped: the lookup goes anonymous).
    :return: True = served; False = not served (not found, or refused); None = cannot tell
        (unreachable, timed out, or this plugin does not look up registries).

    When called: by the reaper, for pinned SalvageRecords, every `--reap-interval`; at
        most a few at once, backed off per record while the answer is not True.
    Process: controller (leader), the reaper.
    Sync/async: async in practice (registry HTTP).
    Deadline: the reaper's, 30 s per call (`move_on_after`: expiry counts as cannot tell);
        the built-in's own `--registry-resolve-timeout` bounds each request inside it.
    Built-in: `registry` (HEAD of the manifest with the pull secrets, its CA and insecure
        settings).
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

    When called: by the reaper, every `--reap-interval`, when the registry serves the
        digest again, when pinning is turned off, and before an expired record is deleted
        (False or None keeps the record for the next cycle).
    Process: controller (leader), the reaper.
    Sync/async: async in practice (asks the node's agent).
    Deadline: 10 s per call (`move_on_after`: expiry counts as False).
    Built-in: `agent` (the node's agent).
    """


# -- doctor -------------------------------------------------------------------------------


@hookspec(firstresult=True)
def node_health(node: str, settings: ControllerSettings, plugin_settings: PluginSettings,
                kube: KubeClient) -> NodeHealth | None:
    """Reach `node`'s agent the way the controller would and report its health.

    Isolated like every hook: a raising implementation answers None, which doctor reports
    as a failed row.

    :param node: the node's name.
    :param settings: core's settings (the TLS files, the controller's namespace).
    :param plugin_settings: every plugin's settings; a plugin reads its own with
        `plugin_settings.of(ItsSettingsStruct)`.
    :param kube: a Kubernetes client (e.g. to list the plugin's agent pods).
    :return: the node's `NodeHealth`, or None = this plugin does not manage node agents.

    When called: once per node for `tote doctor`'s agent rows: by the controller serving
        its `/agents` report (at most once per 5 s), or by `tote doctor` itself when it
        has an identity to reach agents with (then with no `configure` call before).
    Process: the controller (any replica, its health port's task), or `tote doctor`.
    Sync/async: either.
    Deadline: 15 s per node (`move_on_after`: expiry is a failed row).
    Built-in: `agent`.
    """
