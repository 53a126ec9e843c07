"""The OCI distribution protocol and image format, written once for the controller and the
agent: media types (`mediatypes`), registry auth parsing (`auth`), the HTTP client with its
TLS trust and error mapping (`client`) and the push steps of the distribution spec
(`upload`).

Why in core: the registry plugin (tag lookups, the backup push's token exchange) and the
containerd agent (the push itself) speak the same protocol, and plugins may not import each
other. It sits below kube, salvage and reconcile and imports none of them (the layering
test checks it), so the agent can use it without pulling in the controller.
"""
