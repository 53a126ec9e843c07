"""`tote disable --reason TEXT` / `tote enable [--reason TEXT]`: turn salvage off or on.

Writes the kill-switch ConfigMap (tote_core/killswitch) with the caller's own kubeconfig —
server-side apply, field manager `tote-cli`, creating the ConfigMap when absent — and records
who (the user name the API server's SelfSubjectReview returns), when (RFC 3339 UTC) and why.
The controller sees the change within seconds (its informer), logs it, posts an Event on the
ConfigMap and shows it in `tote status` and `tote doctor`.

Every failure is one line and a non-zero exit, and nothing is written: no or an empty
`--reason` for `disable`, a namespace that does not exist, permissions missing (checked first
with SelfSubjectAccessReviews: get and patch on `configmaps/<name>`, plus create when it does
not exist yet, named one by one), the API server unreachable.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

import trio

from tote_core import killswitch
from tote_core.errors import ConfigError, KubeError, NotFound
from tote_core.kube import config as kube_config
from tote_core.kube.client import KubeClient, resource_path
from tote_core.structs.kube import ConfigMap

FIELD_MANAGER = "tote-cli"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
MAX_REASON = 512
DEFAULT_NAMESPACE = "tote-system"
DEFAULT_CONFIG_MAP = "tote-config"  # the controller's --config-map default (release `tote`)


class SwitchError(Exception):
    """Nothing was written; the message is the command's one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: bad input fails closed with one reason.
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def parse(argv: Sequence[str], *, enable: bool) -> argparse.Namespace:
    prog = "tote enable" if enable else "tote disable"
    p = _Parser(prog=prog, description=(
        "Turn salvage back on at runtime, recording who, when and why." if enable else
        "Turn salvage (and detection) off at runtime until `tote enable`, recording who, "
        "when and why. Deployment tools never undo it."))
    a = p.add_argument
    a("--reason", default=None,
      help="why (recorded and shown by tote status and tote doctor)"
           + ("" if enable else "; required"))
    a("--kubeconfig", default="", help="default: $KUBECONFIG, ~/.kube/config")
    a("--context", default="", help="kubeconfig context (default: the current one)")
    a("--namespace", "-n", default=DEFAULT_NAMESPACE,
      help=f"the controller's namespace (default {DEFAULT_NAMESPACE})")
    a("--config-map", default=DEFAULT_CONFIG_MAP,
      help="the kill-switch ConfigMap, as the controller's --config-map (the chart's "
           f"<fullname>-config; default {DEFAULT_CONFIG_MAP})")
    args = p.parse_args(list(argv))
    reason = (args.reason or "").strip()
    if not enable and not reason:
        raise ConfigError("--reason is required and must not be empty: say why salvage is "
                          "being turned off (it is recorded and shown by tote status and "
                          "tote doctor)")
    if "\n" in reason or "\r" in reason:
        raise ConfigError("--reason must be one line")
    if len(reason) > MAX_REASON:
        raise ConfigError(f"--reason is {len(reason)} characters; keep it under {MAX_REASON}")
    args.reason = reason
    return args


@dataclass(frozen=True)
class Who:
    name: str
    verified: bool
    why_not: str = ""


async def whoami(kube: KubeClient) -> Who:
    """The user the API server authenticates this kubeconfig as (SelfSubjectReview,
    authentication.k8s.io/v1, any authenticated user may ask). Where the API is not served
    or refused, the local login name marked unverified, and why."""
    try:
        review: dict[str, Any] = await kube.create(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        name = review.get("status", {}).get("userInfo", {}).get("username", "")
        if name:
            return Who(name, True)
        why = "the SelfSubjectReview named no user"
    except KubeError as exc:
        if exc.status == 0:
            raise  # unreachable: reported as such by the caller
        why = f"SelfSubjectReview: HTTP {exc.status} {exc.reason}".strip()
    try:
        local = getpass.getuser()
    except (KeyError, OSError):
        local = "unknown"
    return Who(f"{local} (unverified local user)", False, why)


async def missing_permissions(kube: KubeClient, namespace: str, name: str,
                              verbs: Sequence[str]) -> list[str]:
    """The verbs of `verbs` on configmaps/`name` in `namespace` the caller lacks
    (SelfSubjectAccessReviews, which any authenticated user may create)."""
    missing = []
    for verb in verbs:
        review: dict[str, Any] = await kube.create(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
             "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb,
                                             "resource": "configmaps", "name": name}}})
        if not review.get("status", {}).get("allowed"):
            missing.append(verb)
    return missing


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(namespace: str, name: str, *, enabled: bool, who: str, when: str, reason: str
         ) -> dict[str, Any]:
    """What `tote-cli` owns in the ConfigMap (server-side apply): the switch and its record.
    A key left out (no reason on enable) is removed from what it owned before."""
    word = "true" if enabled else "false"
    data = {killswitch.KEY_ENABLED: word, killswitch.KEY_TO: word, killswitch.KEY_BY: who,
            killswitch.KEY_AT: when}
    if reason:
        data[killswitch.KEY_REASON] = reason
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/component": "kill-switch",
                                    "app.kubernetes.io/managed-by": FIELD_MANAGER}},
            "data": data}


def _was(current: ConfigMap | None, namespace: str, name: str) -> str:
    if current is None:
        return "was: no ConfigMap, the controller's --enabled decided"
    sw = killswitch.read(current.data, default=True, namespace=namespace, name=name)
    if sw.source == "flag":
        return "was: no runtime value, the controller's --enabled decided"
    if sw.source == "invalid":
        return f"was: {current.data.get(killswitch.KEY_ENABLED)!r}, not a boolean (OFF)"
    return "was: " + killswitch.describe(sw).removeprefix("salvage ")


async def switch(kube: KubeClient, *, enable: bool, namespace: str, name: str, reason: str,
                 now: dt.datetime | None = None) -> str:
    """Check, then write; returns the line that says what changed. SwitchError: nothing
    was written."""
    where = f"configmaps/{name} in namespace {namespace}"
    try:
        who = await whoami(kube)
        try:
            await kube.get(resource_path("v1", "namespaces", name=namespace), dict)
        except NotFound as exc:
            raise SwitchError(f"namespace {namespace!r} does not exist (tote's namespace: "
                              "--namespace/-n)") from exc
        except KubeError as exc:
            if exc.status == 0:
                raise
            # 403: this user may not read namespaces; the write below still says if it is
            # missing.
        missing = await missing_permissions(kube, namespace, name, ("get", "patch"))
        current: ConfigMap | None = None
        if "get" not in missing:
            try:
                current = await kube.get(resource_path("v1", "configmaps", namespace, name),
                                         ConfigMap)
            except NotFound:
                current = None
        if current is None:
            missing += await missing_permissions(kube, namespace, name, ("create",))
        if missing:
            raise SwitchError(
                f"{who.name} may not {', '.join(missing)} {where}; nothing was written. "
                f"Needed: get and patch on {where} (and create while it does not exist), "
                "e.g. a Role with resources [configmaps], resourceNames "
                f"[{name}], verbs [get, patch, create]")
        when = rfc3339(now or dt.datetime.now(dt.UTC))
        await kube.request(
            "PATCH", resource_path("v1", "configmaps", namespace, name),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=body(namespace, name, enabled=enable, who=who.name, when=when,
                      reason=reason),
            content_type=APPLY_PATCH)
    except KubeError as exc:
        if exc.status == 0:
            raise SwitchError(f"cannot reach the API server at {kube.config.server}: "
                              f"{exc}") from exc
        if exc.status == 401:
            raise SwitchError(f"the API server at {kube.config.server} refused these "
                              f"credentials: {exc}") from exc
        raise SwitchError(f"{exc}; nothing was written") from exc
    state = "enabled" if enable else "DISABLED"
    line = (f"salvage {state} in {namespace} (ConfigMap {name}; "
            f"{_was(current, namespace, name)}) by {who.name} at {when}")
    if reason:
        line += f": {reason}"
    if not who.verified:
        line += f" [user not verified: {who.why_not}]"
    return line


def run(argv: Sequence[str], *, enable: bool, out: TextIO = sys.stdout) -> int:
    args = parse(argv, enable=enable)
    kube = KubeClient(kube_config.load(args.kubeconfig, args.context))

    async def go() -> str:
        try:
            return await switch(kube, enable=enable, namespace=args.namespace,
                                name=args.config_map, reason=args.reason)
        finally:
            await kube.aclose()

    try:
        line = trio.run(go)
    except SwitchError as exc:
        print(f"tote {'enable' if enable else 'disable'}: {exc}", file=sys.stderr)
        return 1
    print(line, file=out)
    return 0
