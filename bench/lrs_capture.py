"""Capture a real Envoy's load reports: the shapes ``bench/lrs_fleet.py`` sends.

``python -m bench.lrs_capture [--out bench/fixtures/envoy-lrs-report.json]``

A real ``routeplane serve`` (SQLite) serves one server of three replicas (echo threads on
loopback) to a real Envoy (``routeplane bootstrap``), whose ``load_stats_config`` is pointed
at a capturing LRS server here instead of routeplane's (a static cluster on loopback: the only
change to the bootstrap). The capturing server answers as routeplane does (every cluster, per
endpoint, every second) and keeps the raw bytes of Envoy's first report with traffic (requests
answered and some held open, so every counter Envoy fills is there; Envoy 1.40 sends its whole
node, ~61 KB, in every report). Written as base64 with the Envoy version; bench/lrs_fleet.py reads
only the fixture, so a bench run needs no Envoy for its shapes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import grpc
from envoy.service.load_stats.v3 import lrs_pb2

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy
from harness.waiting import free_port, wait_until

FIXTURE = Path(__file__).with_name("fixtures") / "envoy-lrs-report.json"
SERVICE = "envoy.service.load_stats.v3.LoadReportingService"
CAPTURE_CLUSTER = """  - name: lrs_capture
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    load_assignment:
      cluster_name: lrs_capture
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {"address": "127.0.0.1", "port_value": PORT}
"""


class Capture:
    """A bare LRS server on loopback in a thread of its own: keeps the first request and the
    first report whose clusters had requests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.first: bytes | None = None
        self.report: bytes | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None

    async def _stream(self, requests: Any, context: Any) -> Any:
        async for raw in requests:
            if self.first is None:
                self.first = raw
                response = lrs_pb2.LoadStatsResponse(
                    send_all_clusters=True, report_endpoint_granularity=True
                )
                response.load_reporting_interval.FromSeconds(1)
                yield response
                continue
            parsed = lrs_pb2.LoadStatsRequest.FromString(raw)
            busy = any(
                locality.total_issued_requests
                and locality.total_successful_requests
                and locality.total_requests_in_progress
                for stats in parsed.cluster_stats
                for locality in stats.upstream_locality_stats
            )
            if busy and self.report is None:
                self.report = raw

    async def _serve(self) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "StreamLoadStats": grpc.stream_stream_rpc_method_handler(
                            self._stream,
                            request_deserializer=None,
                            response_serializer=lrs_pb2.LoadStatsResponse.SerializeToString,
                        )
                    },
                )
            ]
        )
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    def __enter__(self) -> Capture:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _answered(envoy: Envoy, lrs: Capture) -> None:
    """Requests answered one after another until a report with traffic is kept."""
    for _ in range(2000):
        if lrs.report is not None:
            return
        envoy.get(host="echo.local")


def envoy_version() -> str:
    envoy = str(Path(sys.executable).parent / "envoy")
    out = subprocess.run([envoy, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return found.group(1) if found else "unknown"


def capture(workdir: Path) -> dict[str, Any]:
    cp = ControlPlane.create(workdir, extra=["--load-report-interval", "1"])
    echoes = [EchoThread(name=f"r{i}") for i in range(3)]
    envoy = Envoy.create(workdir, node_id="capture-edge", region="us-west", xds=[cp.xds])
    cp.start()
    held: list[threading.Thread] = []
    try:
        cp.wait_ready()
        store = open_registry(cp.registry)
        store.create_server(name="echo", hostnames=["echo.local"], protocol="http")
        for echo in echoes:
            store.register_replica(server="echo", address=echo.address, region="us-west")
        store.close()
        with Capture() as lrs:
            path = workdir / "capture-edge.yaml"
            text = path.read_text()
            text = text.replace(
                "  load_stats_config:\n    api_type: GRPC\n    transport_api_version: V3\n"
                "    grpc_services:\n    - envoy_grpc:\n        cluster_name: routeplane_xds",
                "  load_stats_config:\n    api_type: GRPC\n    transport_api_version: V3\n"
                "    grpc_services:\n    - envoy_grpc:\n        cluster_name: lrs_capture",
            )
            assert "cluster_name: lrs_capture" in text, "the bootstrap's LRS block moved"
            text = text.replace(
                "static_resources:\n  clusters:\n",
                "static_resources:\n  clusters:\n" + CAPTURE_CLUSTER.replace("PORT", str(lrs.port)),
            )
            path.write_text(text)
            envoy.start()
            envoy.wait_live()
            wait_until(lambda: envoy.get(host="echo.local")[0] == 200, what="routing")
            # Requests answered all along, and some held open across a report: every counter
            # Envoy fills is filled.
            held = [threading.Thread(target=_answered, args=(envoy, lrs), daemon=True)] + [
                threading.Thread(
                    target=envoy.get,
                    kwargs={"path": "/slow?ms=2500", "host": "echo.local", "timeout": 10},
                )
                for _ in range(3)
            ]
            for thread in held:
                thread.start()
            wait_until(lambda: lrs.report is not None, timeout=15, what="a report with traffic")
            assert lrs.report is not None
            return {
                "envoy": envoy_version(),
                "how": (
                    "bench/lrs_capture.py: a real Envoy (routeplane bootstrap) configured by a "
                    "real routeplane serve with one server of 3 replicas on loopback, its "
                    "load_stats_config pointed at a capturing LRS server answering as "
                    "routeplane does (send_all_clusters, report_endpoint_granularity, 1 s); "
                    "requests answered all along and 3 held open; Envoy sends its whole node "
                    "(with every extension) in every LoadStatsRequest, so the report carries "
                    "it: a first request is that node alone"
                ),
                "report": base64.b64encode(lrs.report).decode(),
            }
    finally:
        for thread in held:
            thread.join(15)
        envoy.stop()
        cp.stop()
        for echo in echoes:
            echo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(FIXTURE))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="routeplane-lrs-capture-") as tmp:
        found = capture(Path(tmp))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=2) + "\n")
    report = lrs_pb2.LoadStatsRequest.FromString(base64.b64decode(found["report"]))
    print(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
