"""Replicas reporting a utilization a test sets (and may take away while they run)."""

from __future__ import annotations

from xds.data.orca.v3 import orca_load_report_pb2

from tests.integration.orca_routing.raw_reporters import RawGrpcEcho, RawHttpEcho


def _report(utilization: float, metric: str) -> orca_load_report_pb2.OrcaLoadReport:
    found = orca_load_report_pb2.OrcaLoadReport(rps_fractional=1)
    if metric.startswith("named_metrics."):
        found.named_metrics[metric.removeprefix("named_metrics.")] = utilization
    else:
        setattr(found, metric, utilization)
    return found


class HttpReplica:
    """The HTTP echo, reporting ``metric`` on every response (TEXT header)."""

    def __init__(
        self, *, name: str, utilization: float | None, metric: str = "application_utilization"
    ) -> None:
        self._metric = metric
        self._echo = RawHttpEcho(name=name)
        self.address = self._echo.address
        self.report(utilization)

    def report(self, utilization: float | None) -> None:
        """Report ``utilization`` from now on (None: nothing)."""
        self._echo.headers = (
            ()
            if utilization is None
            else (
                (
                    "endpoint-load-metrics",
                    f"TEXT {self._metric}={utilization}, rps_fractional=1",
                ),
            )
        )

    def stop(self) -> None:
        self._echo.stop()


class GrpcReplica:
    """The gRPC echo, reporting ``metric`` in every call's trailer and on ``OpenRcaService``
    streams."""

    def __init__(
        self, *, name: str, utilization: float | None, metric: str = "application_utilization"
    ) -> None:
        self._metric = metric
        self._echo = RawGrpcEcho(name=name)
        self.address = self._echo.address
        self.report(utilization)

    def report(self, utilization: float | None) -> None:
        if utilization is None:
            self._echo.trailers, self._echo.oob = (), None
            return
        data = _report(utilization, self._metric).SerializeToString()
        self._echo.trailers = (("endpoint-load-metrics-bin", data),)
        self._echo.oob = data

    def stop(self) -> None:
        self._echo.stop()
