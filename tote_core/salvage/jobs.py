"""A salvage job: what the salvage pool works on, and every pod waiting on it.

The pool does two kinds of work, told apart by type, never by parsing a key:

- `SalvageWork`: copy one image (digest) to one node, keyed by the SalvageRecord's name —
  one per (digest, target node), shared by every pod waiting on it;
- `RemoveCorrupt`: remove a node's corrupt image record for one pod's container (one per
  pod: removing the record is per node, retried only after a back-off).

Both are frozen (hashable: they are the work queue's keys) and print as the key the logs
have always shown (`<record>` / `corrupt/<namespace>/<pod uid>/<container>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tote_core.hooks.types import Incident
from tote_core.structs.kube import Pod


@dataclass(frozen=True)
class SalvageWork:
    """Salvage the image of SalvageRecord `record` (its name: digest and target node)."""

    record: str

    def __str__(self) -> str:
        return self.record


@dataclass(frozen=True)
class RemoveCorrupt:
    """Remove the corrupt image record behind `container` of the pod `pod_uid`."""

    namespace: str
    pod_uid: str
    container: str

    @classmethod
    def of(cls, pod: Pod, container: str) -> RemoveCorrupt:
        return cls(pod.metadata.namespace, pod.metadata.uid, container)

    def __str__(self) -> str:
        return f"corrupt/{self.namespace}/{self.pod_uid}/{self.container}"


Work = SalvageWork | RemoveCorrupt


@dataclass
class Job:
    """Everything known about one piece of work.

    `namespace` is where its record lives: the first failing pod's, until the record is
    found in another (the pods themselves may be in any namespace)."""

    namespace: str
    record: str
    incident: Incident
    pods: dict[str, Pod] = field(default_factory=dict)  # pod key → latest seen
