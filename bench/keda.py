"""KEDA's external-push scaler: a cold start through Envoy -> ``StreamIsActive`` true.

A control plane (``serve --keda-listen``, SQLite registry), a real Envoy, and a server in
reject mode with no replica and an autoscaling rule whose scale-down window is 0 s (so it goes
inactive at the next tick after its demand, and every try starts from inactive). A KEDA client
built from KEDA's proto (``harness/keda.py``) follows the server's ``StreamIsActive``. Each try
waits until the stream says false, sends one request through Envoy (answered 503 at once: a
cold start, counted in Envoy's next load report), and stops the clock when the stream says
true: request sent -> true received, both on this process's monotonic clock.

The cold start reaches routeplane in Envoy's load report, so the figure is bounded below by
the report interval's phase: half the interval on average (``--load-report-interval``, given
here and in the table). :func:`measure` takes the KEDA address and the Envoy to send through,
so that a fleet-wide run can send through one replica's Envoy and follow another's KEDA port.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import summarize, tail_name
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


def run(workdir: Path, *, tries: int, interval: float = 0.2) -> dict[str, Any]:
    """A lone ``serve`` and one Envoy on loopback; :func:`measure` through them."""
    keda = f"127.0.0.1:{free_port()}"
    cp = ControlPlane.create(
        workdir,
        extra=[
            "--workers",
            "1",
            "--keda-listen",
            keda,
            "--load-report-interval",
            str(interval),
        ],
    )
    cp.start()
    envoy: Envoy | None = None
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
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
        envoy = Envoy.create(workdir, node_id="bench-keda", region="us-west", xds=[cp.xds])
        envoy.start()
        envoy.wait_live()
        live = envoy
        wait_until(lambda: routed(live, HOST), what=f"{HOST} routed")
        wait_for_reports_after_now(cp.admin)
        measured = measure(
            keda=keda, envoy=envoy, server=SERVER, host=HOST, tries=tries, interval=interval
        )
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
    samples = measured["samples_ms"]
    return {
        "tries": tries,
        "report_interval_s": interval,
        "lost": measured["lost"],
        "cold_start_to_active": {
            **summarize(samples, suffix="_ms"),
            "samples_ms": samples,
        }
        if samples
        else {"n": 0},
    }


def table(result: dict[str, Any]) -> list[str]:
    """The KEDA table of BENCHMARKS.md."""
    s = result["cold_start_to_active"]
    if not s.get("n"):
        return ["", "KEDA external-push: no sample (every try lost)."]
    tail = s["p99_ms"] if s["p99_ms"] is not None else s["max_ms"]
    return [
        "",
        "KEDA external-push (`serve --keda-listen`, one replica): a request through Envoy meets "
        "a zero-replica server (reject mode) -> `StreamIsActive` true at a KEDA client built "
        f"from KEDA's proto. The cold start reaches routeplane in Envoy's load report (every "
        f"{result['report_interval_s']} s here), so half the interval is the expected floor.",
        "",
        f"| tries | p50 ms | p90 ms | {tail_name(s['n'])} ms | lost |",
        "|---:|---:|---:|---:|---:|",
        f"| {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {tail} | {result['lost']} |",
    ]


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
