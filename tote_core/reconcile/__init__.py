"""Workqueue and the reconcile engine that drains it."""
