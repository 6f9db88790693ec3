"""What the sample replicas report (``--report``, ``--report-file``, or ``report=`` in tests):
a fixed report or a callable, with ``rps_fractional=100`` added unless the report names it, so
that Envoy's and gRPC's weight (qps / utilization) is 100 / utilization: a measured qps would
feed the split back into the weights, and Envoy keeps weights as whole numbers of at least 1
(with 1, every utilization above 0.5 weighed the same).
"""

from __future__ import annotations

import dataclasses

from control_plane.orca import LoadReport, ReportSource, as_source

SampleReport = LoadReport | ReportSource | None
SAMPLE_RPS = 100.0


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
            return dataclasses.replace(current, rps_fractional=SAMPLE_RPS)
        return current

    return with_rps
