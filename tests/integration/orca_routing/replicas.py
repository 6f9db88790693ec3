"""The sample replicas (``control_plane.dev.samples``, in-process) reporting a utilization a
test sets, and may take away while they run (``report(None)``: nothing from then on, which is
how a replica stops reporting). The samples add ``rps_fractional=100``, so a weight is
100 / utilization."""

from __future__ import annotations

from control_plane.dev.samples.grpc_echo import GrpcEchoThread
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.orca import LoadReport

OUT_OF_BAND_MIN_INTERVAL = 0.1  # the tests ask for a report every 100ms


class _Reporting:
    def __init__(self, utilization: float | None, metric: str) -> None:
        self._metric = metric
        self._current: LoadReport | None = None
        self.report(utilization)

    def report(self, utilization: float | None) -> None:
        """Report ``utilization`` (as ``metric``) from now on; None: nothing."""
        self._current = (
            None if utilization is None else LoadReport.from_mapping({self._metric: utilization})
        )

    def _source(self) -> LoadReport | None:
        return self._current


class HttpReplica(_Reporting):
    """The HTTP echo sample, its report in the TEXT ``endpoint-load-metrics`` header of every
    response."""

    def __init__(
        self, *, name: str, utilization: float | None, metric: str = "application_utilization"
    ) -> None:
        super().__init__(utilization, metric)
        self._echo = EchoThread(name=name, report=self._source)
        self.address = self._echo.address

    def stop(self) -> None:
        self._echo.stop()


class GrpcReplica(_Reporting):
    """The gRPC echo sample, its report in every call's ``endpoint-load-metrics-bin`` trailer
    and on ``OpenRcaService`` streams."""

    def __init__(
        self, *, name: str, utilization: float | None, metric: str = "application_utilization"
    ) -> None:
        super().__init__(utilization, metric)
        self._echo = GrpcEchoThread(
            name=name, report=self._source, orca_min_interval=OUT_OF_BAND_MIN_INTERVAL
        )
        self.address = self._echo.address

    def stop(self) -> None:
        self._echo.stop()
