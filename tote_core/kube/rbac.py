"""What the controller's ServiceAccount must be allowed, declared once for the chart, doctor
and the tests.

A rule is (API group, resource[/subresource], verb, in the controller's namespace only,
object name or "" for any). `in_namespace` rules are the chart's Role in the release
namespace; the others its ClusterRole. `RBAC_NEEDS` is what every controller calls; the
functions below add what an option makes it call (the chart grants those only with the
option's value).

The chart's rules are tested equal to these (tests/integration/test_helm_tls.py) and `tote
doctor` checks them with SubjectAccessReviews. tests/integration/salvage/test_rbac_calls.py
drives controllers through every API-touching path against a real API server with audit
logging and checks that the requests their identity made are exactly these rules (nothing
refused, nothing unused), so the list cannot drift from the code as a hand-kept one did.
"""

from __future__ import annotations

from typing import NamedTuple


class Rule(NamedTuple):
    group: str
    resource: str  # "resource" or "resource/subresource"
    verb: str
    in_namespace: bool  # only in the controller's own namespace (the chart's Role)
    name: str  # "" = any object

    def __str__(self) -> str:
        where = "own namespace" if self.in_namespace else "cluster"
        named = f" {self.name}" if self.name else ""
        group = f".{self.group}" if self.group else ""
        return f"{self.verb} {self.resource}{group}{named} ({where})"


def _rules(group: str, resource: str, verbs: tuple[str, ...], *, in_namespace: bool = False,
           names: tuple[str, ...] = ("",)) -> tuple[Rule, ...]:
    return tuple(Rule(group, resource, v, in_namespace, n) for v in verbs for n in names)


RBAC_NEEDS: tuple[Rule, ...] = (
    # informers (list+watch); patch: one annotation on a pod once its image is on the node,
    # so kubelet starts it at once (salvage/pods.py)
    *_rules("", "pods", ("list", "watch", "patch")),
    *_rules("", "nodes", ("list", "watch")),
    *_rules("", "namespaces", ("list", "watch")),
    # events: post, and aggregate into a series by patch; get: after a restart an event of
    # the same name exists (409 on create) and its series count is read before the patch
    *_rules("events.k8s.io", "events", ("create", "get", "patch")),
    # kubelet's pull failures (core/v1 Events, involvedObject.kind=Pod, reason=Failed):
    # detection starts there, before the pod status says ErrImagePull
    *_rules("", "events", ("list", "watch")),
    # the SalvageRecord lifecycle (get, cross-namespace list by label, create, spec patch)
    # and the TTL reaper (list, delete); status written by patch only
    *_rules("tote.dev", "salvagerecords", ("get", "list", "create", "patch", "delete")),
    *_rules("tote.dev", "salvagerecords/status", ("patch",)),
    # owner metadata lookups of the annotation-inheritance plugin (tote_inheritance)
    *_rules("apps", "replicasets", ("get",)),
    *_rules("apps", "deployments", ("get",)),
    *_rules("apps", "statefulsets", ("get",)),
    *_rules("apps", "daemonsets", ("get",)),
    *_rules("batch", "jobs", ("get",)),
    *_rules("batch", "cronjobs", ("get",)),
    # leader election
    *_rules("coordination.k8s.io", "leases", ("get", "create", "update"), in_namespace=True),
)


def kill_switch(config_map: str) -> tuple[Rule, ...]:
    """The runtime kill-switch ConfigMap (`--config-map`): an informer by field selector
    metadata.name=NAME, which RBAC authorizes as a request for that name. No `get`: the
    controller never reads it otherwise (`tote disable`/`enable` run as the user)."""
    return _rules("", "configmaps", ("list", "watch"), in_namespace=True,
                  names=(config_map,))


def issued_secret_names(prefix: str, *, webhook: bool) -> tuple[str, ...]:
    """The Secrets `--tls-issue-secrets PREFIX` keeps (PREFIX-webhook-tls with the
    webhook); the names tote_core/components/cert_issuer.py writes."""
    roles = ("controller", "agent", *(("webhook",) if webhook else ()))
    return (f"{prefix}-ca", *(f"{prefix}-{r}-tls" for r in roles))


def issuer(prefix: str, *, webhook: bool) -> tuple[Rule, ...]:
    """`--tls-issue-secrets`: create (RBAC cannot restrict create to names), then read and
    renew each Secret by name."""
    return (*_rules("", "secrets", ("create",), in_namespace=True),
            *_rules("", "secrets", ("get", "update"), in_namespace=True,
                    names=issued_secret_names(prefix, webhook=webhook)))


def webhook_ca_bundle(config: str) -> tuple[Rule, ...]:
    """`--admission-webhook-name`: keep that ValidatingWebhookConfiguration's caBundle."""
    return _rules("admissionregistration.k8s.io", "validatingwebhookconfigurations",
                  ("get", "update"), names=(config,))


# `--registry-resolve`: the failing pod's imagePullSecrets, in any namespace.
REGISTRY_RESOLVE: tuple[Rule, ...] = _rules("", "secrets", ("get",))


def backup_secret(secret: str) -> tuple[Rule, ...]:
    """`--backup-registry-secret`: the backup registry's credentials, read at every push."""
    return _rules("", "secrets", ("get",), in_namespace=True, names=(secret,))
