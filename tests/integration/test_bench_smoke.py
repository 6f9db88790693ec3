"""The benchmark harness at tiny sizes, so it cannot rot (figures are not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run import SMOKE, run_plan, table

pytestmark = pytest.mark.envoy


def test_every_benchmark_runs_and_renders(tmp_path: Path) -> None:
    result = run_plan(SMOKE, tmp_path)
    rendered = table(result)
    assert result["filesystem_baseline"]["tries"] == SMOKE.baseline_tries
    assert [row["ads"] for row in result["propagation"]] == ["delta", "sotw"]
    assert result["proxyless"]["tries"] == SMOKE.propagation_tries
    assert "Proxyless gRPC" in rendered
    sizes = result["propagation_by_size"]
    assert [row["replicas"] for row in sizes] == list(SMOKE.propagation_sizes)
    assert all(row["routeplane"]["tries"] == SMOKE.propagation_size_tries for row in sizes)
    assert "Propagation at every size" in rendered
    assert result["fleet"][0]["storm_errors"] == 0
    assert {row["target"] for row in result["dataplane"]["rows"]} == {
        "routeplane",
        "static",
        "direct",
    }
    assert all(row["errors"] == 0 for row in result["dataplane"]["rows"])
    assert "Simulated fleet" in rendered
    assert result["envoy"] == "1.40.0"
