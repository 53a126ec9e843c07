"""Agent metrics (served on the agent's own /metrics; a private registry so importing this
module in another process never clashes with the controller's metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

BYTES_SENT = Counter("tote_agent_bytes_sent_total", "Blob bytes served to peer agents.",
                     ["path"], registry=REGISTRY)
BYTES_RECEIVED = Counter("tote_agent_bytes_received_total",
                         "Blob bytes received from peer agents.", ["path"], registry=REGISTRY)
BLOBS_SKIPPED = Counter("tote_agent_blobs_skipped_total",
                        "Blobs not transferred because this node already had them.",
                        registry=REGISTRY)
DIGEST_MISMATCH = Counter("tote_agent_digest_mismatches_total",
                          "Blobs rejected because their bytes did not match the digest.",
                          registry=REGISTRY)
TRANSFERS = Counter("tote_agent_transfers_total", "Imports run by this agent (target side).",
                    ["result"], registry=REGISTRY)
TRANSFER_SECONDS = Histogram("tote_agent_transfer_duration_seconds",
                             "Duration of imports (target side).",
                             buckets=(1, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
CONTAINERD_UP = Gauge("tote_agent_containerd_up", "1 if the last containerd probe succeeded.",
                      registry=REGISTRY)
RPCS = Counter("tote_agent_rpcs_total", "Agent RPCs by method and status code.",
               ["method", "code"], registry=REGISTRY)
PUSH_BYTES = Counter("tote_agent_push_bytes_total",
                     "Blob bytes uploaded to registries (backup push).", registry=REGISTRY)
PUSH_BLOBS = Counter("tote_agent_push_blobs_total",
                     "Blobs handled by backup pushes: uploaded, mounted or skipped (present).",
                     ["outcome"], registry=REGISTRY)
UNPACKS = Counter("tote_agent_unpacks_total",
                  "Imports unpacked into CRI's snapshotter while their bytes arrived, by "
                  "result (failed: CRI unpacks at container create instead).",
                  ["result"], registry=REGISTRY)
LAYERS_EXPORTED = Counter("tote_agent_layers_regenerated_total",
                          "Discarded layers this node regenerated from its snapshots for a "
                          "snapshot salvage, by whether the bytes hash to the layer's diff ID "
                          "(false: verified end to end only).",
                          ["verified"], registry=REGISTRY)
