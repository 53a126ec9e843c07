"""Moved to `tote_core.kube.events` (the event recorder lives beside the Kubernetes client).

Kept only while tote_core/salvage/engine.py imports this path; its split changes that import,
and then this module goes.
"""

from tote_core.kube.events import EventRecorder as EventRecorder

__all__ = ["EventRecorder"]
