"""Reading a process's Prometheus `/metrics` in tests and benches: one fetch and one parser
of the text exposition format for the controller, the agents and the demo."""

from __future__ import annotations

import urllib.request


def fetch(port: int, *, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as r:
        return str(r.read().decode())


def parse(text: str) -> dict[str, float]:
    """Sample (name with its labels, as exposed) → value; comments and lines whose value
    is not a number are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        try:
            out[sample] = float(value)
        except ValueError:
            continue
    return out


def total(samples: dict[str, float], prefix: str) -> float:
    """The sum of every sample whose name (with labels) starts with `prefix`: a metric
    over all its label sets, or one label set given in full."""
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def scrape_total(port: int, prefix: str) -> float:
    return total(parse(fetch(port)), prefix)
