"""Which node takes the next session: the most free slots, ties to the lower measured latency."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeLoad:
    """A node as the front last saw it. free: session slots left (after the offers the front has
    sent it and not yet heard back about); latency_p50_ms: its frames' control-to-picture median
    (None: no frames yet)."""

    name: str
    up: bool
    free: int
    latency_p50_ms: float | None = None


def ranked(nodes: Sequence[NodeLoad]) -> list[str]:
    """The nodes to offer a session to, best first (an offer refused by one goes to the next):
    most free slots, then lowest latency (a node with no frames yet counts as 0 ms: it is idle),
    then name so that the order is stable. Nodes the front counts as full come last, not never:
    its count is as old as the last heartbeat, and sessions may have closed since; the node
    itself is the one that knows, and says so when it is full."""
    usable = [n for n in nodes if n.up]
    usable.sort(key=lambda n: (n.free <= 0, -n.free, n.latency_p50_ms or 0.0, n.name))
    return [n.name for n in usable]
