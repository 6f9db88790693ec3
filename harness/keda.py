"""A KEDA client built from KEDA's proto (``control_plane/keda/pb``): what KEDA's operator
asks of ``serve --keda-listen``, for tests and benchmarks alike. ``Follower`` keeps a
``StreamIsActive`` stream open and records every answer with the time it arrived. And what a
cold start through Envoy needs before its first request counts (``routed``,
``wait_for_reports_after_now``; ``tests/integration/load/test_cold_start.py`` has its own)."""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from typing import Any

import grpc

from control_plane.keda.pb import externalscaler_pb2, externalscaler_pb2_grpc
from harness.processes import Envoy, metric_sum
from harness.waiting import wait_until


def routed(envoy: Envoy, host: str) -> bool:
    """Whether ``envoy``'s routes have a virtual host for ``host`` now."""
    dump = json.loads(envoy.admin_get("/config_dump?resource=dynamic_route_configs"))
    return any(
        host in vhost.get("domains", [])
        for config in dump.get("configs", [])
        for vhost in config.get("route_config", {}).get("virtual_hosts", [])
    )


def wait_for_reports_after_now(admin: str) -> None:
    """Envoy adds a cluster to its load report only at a report period's start: two reports
    taken from now mean the clusters it has now are counted."""
    start = metric_sum(admin, "routeplane_load_reports_total")
    wait_until(
        lambda: metric_sum(admin, "routeplane_load_reports_total") >= start + 2,
        what="two load reports",
    )


def ref(server: str, region: str | None = None, **more: str) -> Any:
    """A ScaledObjectRef whose trigger metadata names ``server`` (and ``region``)."""
    metadata = {"server": server, **({"region": region} if region else {}), **more}
    return externalscaler_pb2.ScaledObjectRef(
        name=f"{server}-scaler", namespace="default", scalerMetadata=metadata
    )


class Keda:
    """A plaintext channel to a KEDA scaler address and KEDA's four calls on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address)
        self.stub = externalscaler_pb2_grpc.ExternalScalerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def is_active(self, server: str, region: str | None = None) -> bool:
        return bool(self.stub.IsActive(ref(server, region), timeout=10).result)

    def hpa_desired(self, server: str, region: str | None = None) -> int:
        """What the HPA would compute from GetMetricSpec and GetMetrics: ceil(metric /
        target), reading each field as KEDA does (the float when above 0)."""
        spec = self.stub.GetMetricSpec(ref(server, region), timeout=10)
        (metric_spec,) = spec.metricSpecs
        target = metric_spec.targetSizeFloat or float(metric_spec.targetSize)
        values = self.stub.GetMetrics(
            externalscaler_pb2.GetMetricsRequest(
                scaledObjectRef=ref(server, region), metricName=metric_spec.metricName
            ),
            timeout=10,
        )
        (value,) = values.metricValues
        metric = value.metricValueFloat or float(value.metricValue)
        return math.ceil(metric / target)

    def follow(self, server: str, region: str | None = None) -> Follower:
        return Follower(self, server, region)


class Follower:
    """One ``StreamIsActive`` stream, read in a thread: ``answers`` as (monotonic time,
    result) in arrival order; ``next()`` takes the next one."""

    def __init__(self, keda: Keda, server: str, region: str | None) -> None:
        self._call = keda.stub.StreamIsActive(ref(server, region))
        self.answers: list[tuple[float, bool]] = []
        self.error: grpc.RpcError | None = None
        self._queue: queue.Queue[tuple[float, bool] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for answer in self._call:
                item = (time.monotonic(), bool(answer.result))
                self.answers.append(item)
                self._queue.put(item)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        finally:
            self._queue.put(None)

    def next(self, timeout: float = 10.0) -> tuple[float, bool]:
        """The next answer (AssertionError if none comes within ``timeout`` or the stream
        ended)."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no StreamIsActive answer within {timeout}s") from None
        if item is None:
            raise AssertionError(f"the StreamIsActive stream ended: {self.error}")
        return item

    def close(self) -> None:
        self._call.cancel()
        self._reader.join(timeout=10)
