"""The LRS side's guards: the loop budget for taking reports, and the node -> fleet index of
live xDS streams (rebuilt at most once a second)."""

from __future__ import annotations

from control_plane.load.intake import LoopBudget, NodeFleets


def test_the_loop_budget_refuses_once_spent_and_refills_at_its_share() -> None:
    clock = [0.0]
    budget = LoopBudget(0.5, clock=lambda: clock[0])
    assert budget.take(0.0)
    budget.spend(0.8)  # one report past what was left: the budget goes below zero
    assert not budget.take(0.0)
    clock[0] += 0.5  # +0.25 s of work: still below zero
    assert not budget.take(0.0)
    clock[0] += 1.0  # +0.5 s, capped at one second's worth
    assert budget.take(0.0)
    clock[0] += 100.0
    assert budget.take(0.0)
    budget.spend(0.5)
    assert not budget.take(0.0)  # nothing saved beyond one second's worth


def test_node_fleets_are_read_from_the_xds_streams_at_most_once_a_second() -> None:
    clock = [0.0]
    passes: list[int] = []
    streams = [("edge-1", "edge")]

    def live() -> list[tuple[str, str]]:
        passes.append(1)
        return list(streams)

    fleets = NodeFleets(live, clock=lambda: clock[0])
    assert fleets.of("edge-1") == {"edge"}
    assert fleets.of("nobody") == frozenset()
    streams.append(("edge-1", "apps"))
    assert fleets.of("edge-1") == {"edge"}  # within the second: the same index
    assert len(passes) == 1
    clock[0] += 1.0
    assert fleets.of("edge-1") == {"edge", "apps"}
    assert len(passes) == 2
