"""Event texts: they name the image, digest and nodes, and call it technical debt."""

from __future__ import annotations

DEBT = "This is technical debt — rebuild and push the image properly."


def salvageable(ref: str, digest: str, nodes: list[str]) -> str:
    return (
        f"Registry pull failed for {ref}; image digest {digest} exists on nodes: "
        f"[{', '.join(nodes)}]. {DEBT}"
    )


def not_actionable(raw_image: str, why: str) -> str:
    return f"Cannot salvage {raw_image}: {why}. {DEBT}"
