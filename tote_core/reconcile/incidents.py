"""Incident bookkeeping: counters and hooks fire once per incident, not per reconcile.

An incident is (pod UID, container, image). The digest joins the key once known; before
that the normalised reference stands in, so a tag that later resolves is still one
incident. Entries go when the pod goes.
"""

from __future__ import annotations

from collections import defaultdict


class Incidents:
    def __init__(self) -> None:
        self._outcomes: dict[tuple[str, str, str], set[str]] = {}
        self._by_pod: dict[str, set[tuple[str, str, str]]] = defaultdict(set)

    def first(self, pod_uid: str, container: str, image: str, outcome: str) -> bool:
        """Record `outcome` for the incident; True only the first time it is recorded."""
        key = (pod_uid, container, image)
        outcomes = self._outcomes.setdefault(key, set())
        self._by_pod[pod_uid].add(key)
        if outcome in outcomes:
            return False
        outcomes.add(outcome)
        return True

    def forget_pod(self, pod_uid: str) -> None:
        for key in self._by_pod.pop(pod_uid, set()):
            self._outcomes.pop(key, None)

    def __len__(self) -> int:
        return len(self._outcomes)
