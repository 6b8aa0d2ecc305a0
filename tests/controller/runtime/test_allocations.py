"""Allocations: per-host totals stay exact through placements, moves and removals."""

from __future__ import annotations

from controller.runtime.allocations import Allocations, Usage


def test_totals_follow_placements_moves_and_removals() -> None:
    a = Allocations()
    a.set("web-1", Usage("h1", 2, 2 << 30, ("web",)))
    a.set("web-2", Usage("h1", 1, 1 << 30, ("web", "front")))
    assert a.host("h1") == (3, 3 << 30, 2, frozenset({"web", "front"}))
    # Placing a VM excludes its own usage, so it can be re-placed where it is.
    assert a.host("h1", excluding="web-2") == (2, 2 << 30, 1, frozenset({"web"}))
    a.set("web-2", Usage("h2", 1, 1 << 30, ("web", "front")))  # moved
    assert a.host("h1") == (2, 2 << 30, 1, frozenset({"web"}))
    assert a.host("h2") == (1, 1 << 30, 1, frozenset({"web", "front"}))
    a.remove("web-1")
    assert a.host("h1") == (0, 0, 0, frozenset())
    assert a.host_of("web-2") == "h2" and a.host_of("web-1") is None
