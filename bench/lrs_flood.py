"""Issue 23's load-report flood against a real ``routeplane serve`` (loopback only).

``python -m bench.lrs_flood [--streams 20] [--every 0.26] [--seconds 15] [--code DIR]``

``--streams`` LRS streams each send a report of about 2.6 MB (the most clusters a report may
name, 20 localities each) every ``--every`` seconds, against a control plane asking for one
report a second. Reported: ``/healthz`` latency (max, sampled every 50 ms), the serve process's
resident memory (VmRSS sampled every 100 ms: peak), and the reports it took, dropped and
refused. ``--code DIR`` runs another checkout's control plane (before/after in one run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.load_stats.v3 import lrs_pb2

from bench.attacks import Probe, control_plane, rss_mb
from harness.processes import metric_sum

METHOD = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"


def flood_report() -> bytes:
    request = lrs_pb2.LoadStatsRequest()
    for _ in range(10_000):
        stats = request.cluster_stats.add(cluster_name="default_echo")
        stats.load_report_interval.FromSeconds(1)
        for _ in range(20):
            stats.upstream_locality_stats.add(
                locality=base_pb2.Locality(region="mars"), total_requests_in_progress=1
            )
    return request.SerializeToString()


async def reporter(target: str, node: str, flood: bytes, every: float, until: float) -> str:
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    ) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=None,
            response_deserializer=lrs_pb2.LoadStatsResponse.FromString,
        )()
        try:
            await call.write(
                lrs_pb2.LoadStatsRequest(node=base_pb2.Node(id=node)).SerializeToString()
            )
            await call.read()
            while time.monotonic() < until:
                await call.write(flood)
                await asyncio.sleep(every)  # pacing the attack
            await call.done_writing()
            await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"


async def sample_rss(pid: int, peak: list[float], until: float) -> None:
    while time.monotonic() < until:
        peak[0] = max(peak[0], rss_mb(pid))
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    code = Path(args.code).resolve()  # noqa: ASYNC240 - once, at start
    flood = flood_report()
    with tempfile.TemporaryDirectory(prefix="routeplane-lrs-flood-") as tmp:
        async with control_plane(code, Path(tmp)) as cp:
            before = rss_mb(cp["pid"])
            until = time.monotonic() + args.seconds
            peak = [before]
            with Probe(cp["admin"]) as probe:
                ends = await asyncio.gather(
                    sample_rss(cp["pid"], peak, until),
                    *(
                        reporter(cp["xds"], f"flood-{i}", flood, args.every, until)
                        for i in range(args.streams)
                    ),
                )
            admin = cp["admin"]
            rejected = {
                reason: metric_sum(admin, "routeplane_load_reports_rejected_total", reason=reason)
                for reason in ("rate", "busy", "size", "admission", "streams")
            }
            return {
                "code": str(code),
                "streams": args.streams,
                "report_bytes": len(flood),
                "every_s": args.every,
                "seconds": args.seconds,
                "healthz_max_ms": round(probe.max_ms, 1),
                "rss_before_mb": before,
                "rss_peak_mb": peak[0],
                "reports_taken": metric_sum(admin, "routeplane_load_reports_total"),
                "rejected": {k: v for k, v in rejected.items() if v},
                "stream_ends": sorted(set(ends[1:])),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--every", type=float, default=0.26)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--code", default=str(Path(__file__).resolve().parent.parent))
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
