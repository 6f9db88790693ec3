"""What the sample replicas report (``--report``, ``--report-file``, or ``report=`` in tests):
a fixed report or a callable, with ``rps_fractional=1`` added unless the report names it, so
that Envoy's and gRPC's weight (qps / utilization) is exactly 1 / utilization: a measured qps
would feed the split back into the weights.
"""

from __future__ import annotations

import dataclasses

from control_plane.orca import LoadReport, ReportSource, as_source

SampleReport = LoadReport | ReportSource | None


def sample_source(report: SampleReport) -> ReportSource | None:
    """None when there is nothing to report at all; else a callable for ``orca.Reporter``."""
    if report is None:
        return None
    source = as_source(report)

    def with_rps() -> LoadReport | None:
        current = source()
        if not isinstance(current, LoadReport) or current.empty:
            return current
        if current.rps_fractional is None:
            return dataclasses.replace(current, rps_fractional=1.0)
        return current

    return with_rps
