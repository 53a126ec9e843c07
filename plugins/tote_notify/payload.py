"""What a webhook request carries: the JSON payload, the Slack Block Kit message, the signature.

Pure functions of a `Notification`, so the formats are tested without a network. The JSON
payload has exactly the documented fields (docs/plugins.md), always present (empty string
when unknown), in a fixed order; the Slack message shows the same facts.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

import msgspec

from tote_core.detect.messages import DEBT
from tote_core.hooks.types import Notification

Format = Literal["json", "slack"]
SIGNATURE_HEADER = "X-Tote-Signature-256"
JSON_FIELDS = (
    "type", "pod_name", "namespace", "image_ref", "digest", "source_node", "target_node",
    "error", "timestamp",
)  # fmt: skip

TITLES = {
    "detected": "Image pull failing: tote found the image on another node",
    "salvaged": "Image salvaged from another node",
    "failed": "Salvage or backup push failed",
    "pushed": "Salvaged image pushed to the backup registry",
}
EMOJI = {"detected": ":warning:", "salvaged": ":white_check_mark:", "failed": ":x:",
         "pushed": ":package:"}
_FIELD_MAX = 1900  # Slack: 2000 characters per section field, 3000 per text block
_ERROR_MAX = 2800


def as_json(n: Notification) -> dict[str, str]:
    return {name: getattr(n, name) for name in JSON_FIELDS}


def json_body(n: Notification) -> bytes:
    return msgspec.json.encode(as_json(n))


def slack_body(n: Notification) -> bytes:
    """A Block Kit message (header, the facts as fields, the error, time) with a plain
    `text` fallback for notifications and clients that do not render blocks."""
    title = TITLES[n.type]
    facts = [
        ("Pod", f"{n.namespace}/{n.pod_name}"),
        ("Image", f"`{n.image_ref}`"),
        ("Digest", f"`{n.digest}`" if n.digest else "unknown"),
        ("Source node", n.source_node or "—"),
        ("Target node", n.target_node or "—"),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{label}*\n{value}"[:_FIELD_MAX]}
            for label, value in facts
        ]},
    ]  # fmt: skip
    if n.error:
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": f"*Error*\n```{n.error[:_ERROR_MAX]}```"}})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"{n.timestamp} · tote · {DEBT}"}]})
    text = f"{EMOJI[n.type]} {title}: {n.namespace}/{n.pod_name} {n.image_ref}"
    return msgspec.json.encode({"text": text, "blocks": blocks})


def body(n: Notification, fmt: Format) -> bytes:
    return slack_body(n) if fmt == "slack" else json_body(n)


def signature(key: bytes, data: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the body>`, the value of `X-Tote-Signature-256`."""
    return "sha256=" + hmac.new(key, data, hashlib.sha256).hexdigest()
