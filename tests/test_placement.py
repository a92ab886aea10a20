"""Which node takes an offer (server.cluster.placement): pure, no cluster needed."""

from __future__ import annotations

from server.cluster.placement import NodeLoad, ranked


def test_most_free_first_then_lowest_latency_then_name() -> None:
    nodes = [
        NodeLoad("a", True, 1, 20.0),
        NodeLoad("b", True, 2, 40.0),
        NodeLoad("c", True, 2, 30.0),
        NodeLoad("d", True, 2, None),  # no frames yet: idle, counts as 0 ms
    ]
    assert ranked(nodes) == ["d", "c", "b", "a"]
    assert ranked([NodeLoad("y", True, 1), NodeLoad("x", True, 1)]) == ["x", "y"]


def test_nodes_down_are_never_offered_and_full_ones_are_asked_last() -> None:
    nodes = [
        NodeLoad("down", False, 2, 1.0),
        NodeLoad("full", True, 0, 1.0),
        NodeLoad("over", True, -1, 1.0),  # offers in flight beyond its last count
        NodeLoad("free", True, 1, 90.0),
    ]
    assert ranked(nodes) == ["free", "full", "over"]
    assert ranked([NodeLoad("down", False, 2)]) == []
