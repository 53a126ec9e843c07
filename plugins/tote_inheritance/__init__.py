"""Built-in plugin: workload opt-in inherited from a pod's owners."""
