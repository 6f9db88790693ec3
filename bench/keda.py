"""KEDA's external-push scaler: a cold start through Envoy -> ``StreamIsActive`` true.

Two control planes on one SQLite registry (A with ``--keda-listen``), a real Envoy on each,
and a server in reject mode with no replica and an autoscaling rule whose scale-down window is
0 s (so it goes inactive at the next tick after its demand, and every try starts from
inactive). A KEDA client built from KEDA's proto (``harness/keda.py``) follows the server's
``StreamIsActive`` on A. Each try waits until the stream says false, sends one request through
an Envoy (answered 503 at once: a cold start, counted in Envoy's next load report), and stops
the clock when the stream says true: request sent -> true received, both on this process's
monotonic clock.

The cold start reaches routeplane in Envoy's load report, so the figure is bounded below by
the report interval's phase: half the interval on average (``--load-report-interval``, given
here and in the table). :func:`measure` takes the KEDA address and the Envoy to send through,
so the run sends through replica A's own Envoy (the baseline) and, in the same run, through
replica B's Envoy while following A's KEDA port: B's cold start reaches A through the registry
(B's load record, A's fleet read every ``READ_EVERY``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import summarize, tail, tails_name
from control_plane.fleet.publish import READ_EVERY
from control_plane.registry import open_registry
from harness.keda import Keda, routed, wait_for_reports_after_now
from harness.processes import ControlPlane, Envoy
from harness.waiting import free_port, wait_until

SERVER = "api"
HOST = "api.local"
WARM_UP = 2  # tries not counted: Envoy's load stats take up the cluster at a period's start
TRY_TIMEOUT = 10.0  # for the stream's first answer and for going inactive


def lost_after(interval: float) -> float:
    """How long a try waits for true before it counts as lost: a few report intervals."""
    return 5 * interval + 1.0


def measure(
    *, keda: str, envoy: Envoy, server: str, host: str, tries: int, interval: float
) -> dict[str, Any]:
    """``tries`` cold starts of ``server`` (no replica, reject mode, scale-down window 0 s),
    each a request to ``host`` through ``envoy`` (whose load reports come every ``interval``
    seconds), timed to ``StreamIsActive`` true on the KEDA scaler at ``keda``: the samples in
    ms, and the tries whose true never came (the load view never counted their cold start)."""
    client = Keda(keda)
    follower = client.follow(server)
    samples: list[float] = []
    lost = 0
    try:
        active = follower.next(TRY_TIMEOUT)[1]
        for attempt in range(tries + WARM_UP):
            while active:  # back to inactive: the next tick after the demand
                active = follower.next(TRY_TIMEOUT)[1]
            sent = time.monotonic()
            status, _ = envoy.get(host=host)
            assert status == 503, f"{host} answered {status}: it should have no replica"
            try:
                arrived, active = follower.next(lost_after(interval))
            except AssertionError:
                lost += 1  # its cold start went uncounted (or the stream ended): next try
                continue
            assert active
            if attempt >= WARM_UP:
                samples.append((arrived - sent) * 1000)
    finally:
        follower.close()
        client.close()
    return {"samples_ms": [round(s, 2) for s in samples], "lost": lost}


def serve(workdir: Path, interval: float, *extra: str, registry: str | None = None) -> ControlPlane:
    """One started ``serve --workers 1`` replica (on ``registry``, else a new SQLite file)."""
    cp = ControlPlane.create(
        workdir,
        registry=registry,
        extra=["--workers", "1", "--load-report-interval", str(interval), *extra],
    )
    cp.start()
    return cp


def edge(workdir: Path, cp: ControlPlane, node_id: str) -> Envoy:
    """A started Envoy bootstrapped to ``cp``, with api routed and counted in its reports."""
    envoy = Envoy.create(workdir, node_id=node_id, region="us-west", xds=[cp.xds])
    envoy.start()
    envoy.wait_live()
    wait_until(lambda: routed(envoy, HOST), what=f"{HOST} routed via {node_id}")
    wait_for_reports_after_now(cp.admin)
    return envoy


def summary(measured: dict[str, Any]) -> dict[str, Any]:
    samples = measured["samples_ms"]
    if not samples:
        return {"n": 0}
    return {**summarize(samples, suffix="_ms"), "samples_ms": samples}


def run(workdir: Path, *, tries: int, interval: float = 0.2) -> dict[str, Any]:
    """Two ``serve`` replicas on one SQLite registry, A with ``--keda-listen``, an Envoy on
    each; :func:`measure` on A's KEDA port through A's own Envoy (the baseline), then through
    B's (the cold start reaches A through the registry: B's record, A's fleet read)."""
    keda = f"127.0.0.1:{free_port()}"
    started: list[ControlPlane | Envoy] = []
    try:
        a = serve(workdir, interval, "--keda-listen", keda)
        started.append(a)
        b = serve(workdir, interval, registry=a.registry)
        started.append(b)
        a.wait_ready()
        b.wait_ready()
        registry = open_registry(a.registry)
        registry.put_server(
            name=SERVER,
            hostnames=[HOST],
            protocol="http",
            spec={
                "autoscaling": {
                    "target_concurrency": 1,
                    "min_replicas": 0,
                    "max_replicas": 5,
                    "scale_down_window": "0s",
                }
            },
        )
        registry.close()
        envoy_a = edge(workdir, a, "bench-keda-a")
        started.append(envoy_a)
        envoy_b = edge(workdir, b, "bench-keda-b")
        started.append(envoy_b)
        same = measure(
            keda=keda, envoy=envoy_a, server=SERVER, host=HOST, tries=tries, interval=interval
        )
        across = measure(
            keda=keda, envoy=envoy_b, server=SERVER, host=HOST, tries=tries, interval=interval
        )
    finally:
        for process in reversed(started):
            process.stop()
    result: dict[str, Any] = {
        "tries": tries,
        "report_interval_s": interval,
        "fleet_read_every_s": READ_EVERY,
        "lost": same["lost"],
        "cold_start_to_active": summary(same),
        "across_replicas": {"lost": across["lost"], "cold_start_to_active": summary(across)},
    }
    s, x = result["cold_start_to_active"], result["across_replicas"]["cold_start_to_active"]
    if s.get("n") and x.get("n"):
        result["across_minus_same_ms"] = {
            "p50": round(x["p50_ms"] - s["p50_ms"], 2),
            "tail": round(tail(x) - tail(s), 2),
        }
    return result


def table(result: dict[str, Any]) -> list[str]:
    """The KEDA table of BENCHMARKS.md: through A's own Envoy, and through B's."""
    rows = [
        ("same replica (A's Envoy)", result["cold_start_to_active"], result["lost"]),
    ]
    if "across_replicas" in result:
        across = result["across_replicas"]
        rows.append(("across replicas (B's Envoy)", across["cold_start_to_active"], across["lost"]))
    measured = [s for _, s, _ in rows if s.get("n")]
    if not measured:
        return ["", "KEDA external-push: no sample (every try lost)."]
    lines = [
        "",
        "KEDA external-push (`serve --keda-listen` on replica A of two on one SQLite registry): "
        "a request through Envoy meets a zero-replica server (reject mode) -> `StreamIsActive` "
        "true at a KEDA client on A built from KEDA's proto. The cold start reaches routeplane "
        f"in Envoy's load report (every {result['report_interval_s']} s here), so half the "
        "interval is the expected floor; through B's Envoy it reaches A through the registry "
        "(B's record, A's fleet read every "
        f"{result.get('fleet_read_every_s', READ_EVERY)} s).",
        "",
        f"| path | tries | p50 ms | p90 ms | {tails_name(measured)} ms | lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s, lost in rows:
        if s.get("n"):
            lines.append(
                f"| {name} | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {tail(s)} | {lost} |"
            )
        else:
            lines.append(f"| {name} | 0 | - | - | - | {lost} |")
    if "across_minus_same_ms" in result:
        d = result["across_minus_same_ms"]
        lines += ["", f"Across minus same: p50 {d['p50']} ms, tail {d['tail']} ms."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=200)
    parser.add_argument("--load-report-interval", type=float, default=0.2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        result = run(Path(tmp), tries=args.tries, interval=args.load_report_interval)
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
