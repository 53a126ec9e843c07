"""A salvage job: one (digest, target node), and every pod waiting on it.

Jobs are keyed by the SalvageRecord's name, which is per (digest, target node) and never
contains "/"; a corrupt image record's job is keyed `corrupt/<namespace>/<pod uid>/<container>`
(one per pod: removing the record is per node, retried only after a back-off)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tote_core.hooks.types import Incident
from tote_core.structs.kube import Pod

CORRUPT_PREFIX = "corrupt/"


@dataclass
class Job:
    """Everything known about one (digest, target node) salvage.

    `namespace` is where its record lives: the first failing pod's, until the record is
    found in another (the pods themselves may be in any namespace)."""

    namespace: str
    record: str
    incident: Incident
    pods: dict[str, Pod] = field(default_factory=dict)  # pod key → latest seen


def corrupt_key(pod: Pod, container: str) -> str:
    return f"{CORRUPT_PREFIX}{pod.metadata.namespace}/{pod.metadata.uid}/{container}"
