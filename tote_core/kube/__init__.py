"""A thin async Kubernetes client on httpx, and list+watch informers on top of it."""
