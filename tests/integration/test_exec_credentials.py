"""Out-of-cluster credentials: an exec credential plugin issuing short-lived tokens.

The test starts its own control plane whose API server accepts the static tokens
`tok-1`…`tok-9` (`--token-auth-file`, an extra flag; defaults unchanged), each a different
user `exec-user-N`. The exec plugin (a script written here) hands out the next token on
every call with an `expirationTimestamp` 4 s ahead and counts its calls. tote's client asks
the API server who it is (SelfSubjectReview): the first answer is `exec-user-1`; after the
token's lifetime the client must have asked the plugin again, and the API server sees
`exec-user-2` — the refreshed token was really sent.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from tests.cluster.controlplane import start_control_plane
from tote_core.kube import config as kube_config
from tote_core.kube.client import KubeClient

LIFETIME = 4

PLUGIN = r'''
import datetime, json, pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text() or "0") + 1 if count.exists() else 1
count.write_text(str(n))
exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=LIFETIME)
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": "tok-" + str(n),
                             "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
'''.replace("LIFETIME", str(LIFETIME))


@pytest.fixture(scope="module")
def exec_cp(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    work = tmp_path_factory.mktemp("exec-cp")
    tokens = work / "tokens.csv"
    tokens.write_text("".join(f'tok-{n},exec-user-{n},uid-{n},"tote-exec"\n'
                              for n in range(1, 10)))
    cp = start_control_plane(work / "cp", k8s_bin_dir,
                             extra_apiserver_args=(f"--token-auth-file={tokens}",))
    try:
        yield cp, work
    finally:
        cp.stop()


def _kubeconfig(cp: Any, work: Path) -> tuple[Path, Path]:
    script, count = work / "plugin.py", work / "calls"
    script.write_text(PLUGIN)
    path = work / "exec.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "exec",
        "clusters": [{"name": "c", "cluster": {"server": cp.server,
                                               "certificate-authority": str(cp.ca_file)}}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
            "args": [str(script), str(count)], "interactiveMode": "Never"}}}],
        "contexts": [{"name": "exec", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path, count


async def _whoami(kube: KubeClient) -> str:
    review: dict[str, Any] = await kube.create(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])


def test_exec_plugin_tokens_are_refreshed_before_they_expire(exec_cp: Any) -> None:
    cp, work = exec_cp
    path, count = _kubeconfig(cp, work)
    cfg = kube_config.load(str(path))
    assert count.read_text() == "1"

    async def main() -> list[str]:
        kube = KubeClient(cfg)
        try:
            seen = [await _whoami(kube)]
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.5 * LIFETIME:  # a few token lifetimes
                seen.append(await _whoami(kube))
                await trio.sleep(0.5)
            return seen
        finally:
            await kube.aclose()

    seen = trio.run(main)
    calls = int(count.read_text())
    assert seen[0] == "exec-user-1"
    # Every request succeeded with whichever token was current; the plugin was asked again
    # as each token neared expiry (every 3 to 4 s over ~10 s), never per request.
    assert 3 <= calls <= 6, (calls, seen)
    assert sorted(set(seen)) == [f"exec-user-{n}" for n in range(1, calls + 1)], seen
