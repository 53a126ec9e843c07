"""Backup push: after a salvage, copy the image to `--backup-registry`.

The salvage is never held up or failed by it: `on_salvaged` (called once the SalvageRecord
says Completed) only puts a job on a bounded queue (`QUEUE_SIZE`; a full queue drops the
push, reported like a failed one) and one worker, run by the host in the controller's
nursery, pushes one image at a time under `--transfer-timeout`. A push is tried once —
a dead registry costs one attempt per salvaged image, not a retry storm.

Per job the worker reads the `kubernetes.io/dockerconfigjson` Secret (directly, so a
rotated Secret applies at once), answers the registry's auth challenge for exactly the
target repository (plus pull on repositories it recently pushed to, for cross-repository
mounts), and calls the `push_image` hook: the built-in containerd plugin has the node's
agent stream the blobs from its containerd to the registry, digest preserved.

Outcome: `ImagePushed` (Normal) or `ImagePushFailed` (Warning) on the pod, the
`tote_push_*` metrics, and a `pushed` / `failed` notification through the host.

Ref rewriting: the repository path is kept under the backup host and prefix
(`docker.io/library/nginx:1.25` → `backup.example/mirror/library/nginx:1.25`). A digest-only
reference gets the tag `salvaged-<first 12 hex>`; so does `:latest`, a moving tag a backup
must not overwrite with whichever image was salvaged last.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

from tote_core import metrics
from tote_core.detect import messages
from tote_core.detect.reference import parse
from tote_core.errors import KubeError, RegistryError
from tote_core.hooks.types import (
    Incident,
    Notification,
    PushRequest,
    PushResult,
    TransferRequest,
)
from tote_core.kube.client import resource_path
from tote_core.oci.auth import auths_from_secret, credentials_for, pull_scope, push_scope
from tote_core.oci.client import RegistryClient
from tote_core.salvage.planner import human_bytes
from tote_core.structs.kube import ObjectMeta, Pod
from tote_core.timefmt import utcnow

log = logging.getLogger("tote.plugins.registry.backup")

QUEUE_SIZE = 32
MOUNT_SOURCES = 4  # recently pushed repositories offered for cross-repository mounts
NODE_SPECIFIC = "node"  # RegistryError reason: that node could not serve the image


def split_destination(value: str) -> tuple[str, str]:
    """`HOST[/prefix]` → (host, prefix); settings validated the form at start-up."""
    host, _, prefix = value.strip().strip("/").partition("/")
    return host, prefix.strip("/")


def backup_target(image_ref: str, digest: str, destination: str) -> tuple[str, str, str]:
    """(host, repository, tag) a salvaged image is pushed to."""
    host, prefix = split_destination(destination)
    ref = parse(image_ref)
    repo = f"{prefix}/{ref.path}" if prefix else ref.path
    tag = ref.tag if ref.tag and ref.tag != "latest" else ""
    if not tag:
        tag = "salvaged-" + digest.split(":", 1)[1][:12]
    return host, repo, tag


@dataclass(frozen=True)
class Job:
    incident: Incident
    request: TransferRequest
    host: str
    repository: str
    tag: str

    @property
    def destination(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


class BackupPush:
    """The queue, the worker, and how an outcome is reported."""

    def __init__(self, *, kube: Any, host: Any, recorder: Any, client: RegistryClient,
                 destination: str, secret: str, namespace: str, timeout: float) -> None:
        self.kube = kube
        self.host = host  # the PluginHost: push_image and notify
        self.recorder = recorder
        self.client = client
        self.destination = destination
        self.secret = secret
        self.namespace = namespace
        self.timeout = timeout
        self._send, self._recv = trio.open_memory_channel[Job](QUEUE_SIZE)
        self._queued: set[tuple[str, str]] = set()  # (digest, destination) not yet pushed
        self._recent: OrderedDict[str, None] = OrderedDict()  # repositories pushed to

    # -- intake (called from on_salvaged, never waits) ------------------------------------

    async def submit(self, incident: Incident, request: TransferRequest) -> None:
        if not request.digest:
            return
        host, repo, tag = backup_target(incident.image_ref, request.digest, self.destination)
        job = Job(incident, request, host, repo, tag)
        key = (request.digest, job.destination)
        if key in self._queued:
            log.debug("backup push of %s to %s already queued", request.digest, job.destination)
            return
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            metrics.PUSH_ATTEMPTS.inc()
            await self._failed(job, f"the push queue is full ({QUEUE_SIZE} waiting); "
                               "this image was not pushed")
            return
        self._queued.add(key)

    # -- the worker (a host service) ------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Until cancelled (leadership lost). The channel stays open: a new term of
        leadership runs this again and finds what was still queued."""
        task_status.started()
        while True:
            job = await self._recv.receive()
            self._queued.discard((job.request.digest, job.destination))
            await self.push(job)

    async def push(self, job: Job) -> PushResult | None:
        """One push, reported; never raises (except cancellation)."""
        metrics.PUSH_ATTEMPTS.inc()
        started = time.monotonic()
        error = ""
        done: tuple[PushResult, str] | None = None
        try:
            with trio.fail_after(self.timeout):
                done = await self._push(job)
        except trio.TooSlowError:
            error = f"push exceeded {self.timeout:.0f}s"
        except RegistryError as exc:
            error = str(exc)
        except Exception as exc:  # a plugin bug must not end the worker
            log.exception("backup push of %s crashed", job.request.digest)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            metrics.PUSH_DURATION.observe(time.monotonic() - started)
        if done is None:
            await self._failed(job, error or "no plugin can push images (is the containerd "
                               "plugin disabled?)")
            return None
        await self._pushed(job, *done, time.monotonic() - started)
        return done[0]

    async def _credentials_header(self, host: str, repo: str, mounts: list[str]
                                  ) -> tuple[str, str]:
        """(registry base URL, Authorization value) for pushing to `repo`."""
        creds = None
        if self.secret:
            path = resource_path("v1", "secrets", self.namespace, self.secret)
            try:
                secret: dict[str, Any] = await self.kube.get(path, dict)
            except KubeError as exc:
                raise RegistryError(f"cannot read Secret {self.namespace}/{self.secret}: "
                                    f"{exc}", reason="unauthorized") from exc
            auths = auths_from_secret(secret)
            if not auths:
                raise RegistryError(f"Secret {self.namespace}/{self.secret} is not a "
                                    "kubernetes.io/dockerconfigjson Secret with auths",
                                    reason="unauthorized")
            creds = credentials_for(auths, host)
            if creds is None:
                raise RegistryError(f"Secret {self.namespace}/{self.secret} has no credentials "
                                    f"for {host}", reason="unauthorized")
        async with self.client.session(host, creds) as s:
            base = await s.base()
            auth = await s.authorization([push_scope(repo), *map(pull_scope, mounts)])
        return base, auth

    async def _push(self, job: Job) -> tuple[PushResult, str] | None:
        mounts = [r for r in reversed(self._recent) if r != job.repository][:MOUNT_SOURCES]
        base, auth = await self._credentials_header(job.host, job.repository, mounts)
        # The target just imported the image; the source was checked complete before the
        # transfer (a target with discard_unpacked_layers may have dropped layers since).
        nodes = list(dict.fromkeys(n for n in (job.request.target_node,
                                               job.request.source_node) if n))
        result: PushResult | None = None
        node = ""
        for n, node in enumerate(nodes):
            request = PushRequest(
                node=node, digest=job.request.digest, registry_url=base,
                repository=job.repository, tag=job.tag, authorization=auth,
                ca_pem=self.client.ca_pem, insecure=self.client.insecure,
                mount_from=tuple(mounts))
            try:
                result = await self.host.push_image(request)
                break
            except RegistryError as exc:
                if exc.reason != NODE_SPECIFIC or n == len(nodes) - 1:
                    raise
                log.info("node %s cannot push %s (%s); trying node %s", node,
                         job.request.digest, exc, nodes[n + 1])
        if result is None:
            return None
        self._recent[job.repository] = None
        self._recent.move_to_end(job.repository)
        while len(self._recent) > 64:
            self._recent.popitem(last=False)
        return result, node

    # -- reporting ------------------------------------------------------------------------

    def _pod(self, inc: Incident) -> Pod:
        return Pod(metadata=ObjectMeta(name=inc.pod_name, namespace=inc.namespace,
                                       uid=inc.pod_uid))

    async def _pushed(self, job: Job, r: PushResult, node: str, seconds: float) -> None:
        inc = job.incident
        metrics.PUSH_SUCCESSES.inc()
        what = "index and all platform manifests" if r.index_pushed else "manifest"
        text = (f"Pushed salvaged image {inc.image_ref} ({job.request.digest}) to backup "
                f"registry as {job.destination} ({what} {r.pushed_digest}) from node "
                f"{node}: {r.blobs_uploaded} blobs uploaded "
                f"({human_bytes(r.bytes_uploaded)}), {r.blobs_mounted} mounted, "
                f"{r.blobs_skipped} already there, {seconds:.1f}s.")
        if r.note:
            text += f" {r.note[:1].upper()}{r.note[1:]}; the tag names the {r.platform} image."
        log.info("%s", text)
        await self.recorder.emit(self._pod(inc), "ImagePushed", text, type_="Normal",
                                 action="Push")
        await self._notify("pushed", job, image_ref=job.destination, digest=r.pushed_digest)

    async def _failed(self, job: Job, error: str) -> None:
        inc = job.incident
        metrics.PUSH_FAILURES.inc()
        text = (f"Backup push of {inc.image_ref} ({job.request.digest}) to "
                f"{job.destination} failed: {error}. The salvage itself succeeded; the push "
                f"is not retried. {messages.DEBT}")
        log.warning("%s", text)
        await self.recorder.emit(self._pod(inc), "ImagePushFailed", text, type_="Warning",
                                 action="Push")
        await self._notify("failed", job, image_ref=inc.image_ref, digest=job.request.digest,
                           error=f"backup push to {job.destination} failed: {error}")

    async def _notify(self, type_: str, job: Job, *, image_ref: str, digest: str,
                      error: str = "") -> None:
        inc = job.incident
        await self.host.notify(Notification(
            type=type_,  # type: ignore[arg-type]
            pod_name=inc.pod_name, namespace=inc.namespace, pod_uid=inc.pod_uid,
            image_ref=image_ref, digest=digest,
            source_node=job.request.source_node, target_node=job.request.target_node,
            error=error, timestamp=utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")))
