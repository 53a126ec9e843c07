"""Testing tote plugins (and tote itself) without a cluster: a fake Kubernetes API server that
the real client and informers talk to, scripted agents, a configured plugin host, and the
pytest plugin that offers them as fixtures (docs/testing-plugins.md)."""
