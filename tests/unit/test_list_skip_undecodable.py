"""A list page with one object tote's structs cannot decode: informers (which list with
`skip_undecodable`) leave that object out with a warning naming it and keep the rest; every
other caller still gets the error. Before, one such object failed every relist, so the cache
never synced and the controller never became ready (what the soak hit with `names: null`).

The API server is an httpx transport here: what is tested is the client's decoding, a pure
function of the bytes it is given.
"""

from __future__ import annotations

import json
import logging

import httpx
import msgspec
import pytest

from tote_core.kube.client import KubeClient
from tote_core.kube.config import KubeConfig
from tote_core.structs.kube import Pod

GOOD = {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}}
BAD = {"metadata": {"name": "odd", "namespace": "ns"}, "spec": {"containers": "not a list"}}
WORSE = {"metadata": "not an object"}


def _client(pages: list[dict[str, object]], seen: list[httpx.Request]) -> KubeClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=json.dumps(pages[len(seen) - 1]).encode())

    config = KubeConfig(server="http://127.0.0.1:1", ca_file=None, cert_file=None,
                        key_file=None, token=None, token_file=None, verify=False,
                        namespace="default")  # fmt: skip
    return KubeClient(config, transport=httpx.MockTransport(handler))


async def test_informer_style_list_keeps_the_rest_and_names_the_odd_object(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pages: list[dict[str, object]] = [
        {"metadata": {"resourceVersion": "5", "continue": "t"}, "items": [GOOD, BAD, WORSE]},
        {"metadata": {"resourceVersion": "5"}, "items": [dict(GOOD, metadata={"name": "b"})]},
    ]
    seen: list[httpx.Request] = []
    client = _client(pages, seen)
    got: list[Pod] = []
    with caplog.at_level(logging.WARNING, logger="tote.kube"):
        async for page in client.list_pages("/api/v1/pods", Pod, limit=3,
                                            skip_undecodable=True):  # fmt: skip
            got += page.items
            assert page.metadata.resource_version == "5"
    await client.aclose()
    assert [p.metadata.name for p in got] == ["a", "b"]
    assert got[0].spec.node_name == "n1"
    assert seen[1].url.params["continue"] == "t"  # the second page was still asked for
    text = caplog.text
    assert "skipping ns/odd, which does not decode" in text
    assert "skipping an object without readable metadata" in text


async def test_other_callers_still_get_the_error() -> None:
    client = _client([{"metadata": {}, "items": [GOOD, BAD]}], [])
    with pytest.raises(msgspec.ValidationError):
        await client.list("/api/v1/pods", Pod)
    await client.aclose()
