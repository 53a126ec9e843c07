"""Built-in plugin: workload opt-in inherited from a pod's owners (SPEC §1, WO-12)."""
