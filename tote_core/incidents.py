"""The incident store: what the controller has already done once per incident, so counters,
hooks, events and notifications fire once per incident, not once per reconcile.

An incident belongs to a subject — the UID of the Pod it is about (or of the Namespace or
ConfigMap a configuration warning is about) — and is told apart within it by what the caller
passes: (container, image, outcome) for detection's counters and hooks, "ImageSalvaged" for
the one event per pod, (type, digest, target) for a notification, (reason, note) for a
configuration warning.

One forgetting rule: a subject's entries go when the subject goes. The controller's informer
handlers call `forget(uid)` when a Pod, Namespace or ConfigMap is deleted (a delete missed
during a watch gap is delivered at the relist). A UID is never reused, so nothing is told
twice. As a guard on memory only, not a second rule, at most `MAX_SUBJECTS` subjects are
kept, the longest-known dropped first.
"""

from __future__ import annotations

from collections.abc import Hashable

MAX_SUBJECTS = 100_000


class IncidentStore:
    def __init__(self, *, max_subjects: int = MAX_SUBJECTS) -> None:
        self.max_subjects = max_subjects
        self._done: dict[str, set[tuple[Hashable, ...]]] = {}  # subject → incidents, oldest first

    def seen(self, subject: str, *incident: Hashable) -> bool:
        """Whether `incident` of `subject` was recorded."""
        return incident in self._done.get(subject, ())

    def record(self, subject: str, *incident: Hashable) -> None:
        """Record `incident` of `subject` as done."""
        done = self._done.get(subject)
        if done is None:
            done = self._done[subject] = set()
            if len(self._done) > self.max_subjects:
                del self._done[next(iter(self._done))]
        done.add(incident)

    def first(self, subject: str, *incident: Hashable) -> bool:
        """Record `incident` of `subject`; True only the first time."""
        if self.seen(subject, *incident):
            return False
        self.record(subject, *incident)
        return True

    def forget(self, subject: str) -> None:
        """`subject` is gone: everything recorded about it goes too."""
        self._done.pop(subject, None)

    def __len__(self) -> int:
        return sum(len(done) for done in self._done.values())
