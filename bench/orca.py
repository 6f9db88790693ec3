"""Balancing by what the replica reports (ORCA) against least-request and round robin (issue 27).

One real Envoy (a static bootstrap built here) with three clusters over the same four replicas
(``bench.orca_replicas``, a separate process): ``client_side_weighted_round_robin`` weighting
each replica by the load it reports on every response, ``least_request`` (Envoy's default: the
less busy of two random replicas, by requests in flight from this Envoy) and ``round_robin``.
The cluster's policy comes from one function, :func:`load_balancing_policy`: routeplane's own
translator, from the ``load_balancing`` a server's spec would say.

Each replica has 4 workers and a FIFO queue. Two shapes, the same ~70 % of capacity:
- ``skewed``: one of the four replicas takes 5x longer per request;
- ``mixed``: equal replicas; 90 % of requests cheap, 10 % 20x as expensive. Least-request counts
  requests; the replica's report counts the queued work.
Load is open-loop: Poisson arrivals at a fixed rate (the same seeded sequence for every
policy), never waiting on answers to send (a new connection when none is idle); latency runs
from each request's scheduled time. The policies take turns, segment by segment, on the same
replicas and Envoy; the first ``warmup`` seconds of a segment are not counted. The generator's
lag (actual send - scheduled send) is reported, and a policy whose lag's p99 is over
``LATE_MS`` is marked LATE: it did not get the load it was scheduled.

``python -m bench.orca [--seconds S --rounds R]``: prints the table, writes
``bench/results/orca.json``; ``make bench`` runs it through ``bench/run.py``.
Imports of ``control_plane`` only the spec parser and the cluster translator (for the policy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.propagation import RESULTS, git_revision
from bench.stats import MIN_FOR_P99, MIN_FOR_P999, percentile
from harness.processes import ENVOY, Process, http_get
from harness.waiting import free_port, wait_until

POLICIES = ("utilization", "least_request", "round_robin")
WORKERS = 4
REPLICAS = 4
# The named metrics every replica reports (bench.orca_replicas).
METRICS = ("named_metrics.work", "named_metrics.busy")
# The most connections the generator opens to Envoy (an error past it).
MAX_CONNECTIONS = 4000
# A policy whose generator lag (actual - scheduled send) has a p99 above this did not get the
# load it was scheduled: the table marks it "late" (the 2 shared cores were busy elsewhere).
LATE_MS = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    name: str
    what: str
    base_ms: float  # one ordinary request's service time on an ordinary replica
    factors: tuple[float, ...]  # each replica's slowness
    expensive_share: float
    expensive_cost: float

    def capacity(self) -> float:
        """Requests a second the four replicas can serve, with this mix of costs."""
        mean_cost = 1 - self.expensive_share + self.expensive_share * self.expensive_cost
        return sum(WORKERS / (self.base_ms / 1000 * f * mean_cost) for f in self.factors)


@dataclass(frozen=True, slots=True, kw_only=True)
class Weighting:
    """The utilization policy's knobs (Envoy's ``client_side_weighted_round_robin``)."""

    metric: str = METRICS[0]
    blackout_s: float = 1.0
    weight_update_s: float = 0.1


SHAPES = (
    Shape(
        name="skewed",
        what="one of four replicas 5x slower per request",
        base_ms=40.0,
        factors=(1.0, 1.0, 1.0, 5.0),
        expensive_share=0.0,
        expensive_cost=1.0,
    ),
    Shape(
        name="mixed",
        what="equal replicas; 10% of requests 20x as expensive",
        base_ms=17.0,
        factors=(1.0, 1.0, 1.0, 1.0),
        expensive_share=0.1,
        expensive_cost=20.0,
    ),
)


def load_balancing_policy(policy: str, *, weighting: Weighting = Weighting()) -> dict[str, Any]:
    """The cluster's ``load_balancing_policy`` (JSON form) for ``policy``, as routeplane
    configures a server whose spec says ``load_balancing: <policy>`` (``utilization``:
    ``{utilization: {metric, blackout_period, weight_update_period}}``): routeplane's own
    translator (``translate.clusters.set_load_balancing``), so the bench measures what a
    user of the option gets.

    ``utilization`` weighs by the replicas' ``weighting.metric`` (queued work by default).
    ``blackout_period`` 1 s (Envoy's default 10 s; a replica's weight counts after 1 s of
    reports, inside the first warm-up); ``weight_update_period`` 100 ms, Envoy's floor: every
    response carries a report, so the weights follow the queues as closely as Envoy allows.
    Measured here with 1 s, the mixed shape's weights herded (every update sends the most to
    the replica that was idlest a second ago) and its p50 grew ~13x.
    """
    from envoy.config.cluster.v3 import cluster_pb2
    from google.protobuf import json_format

    from control_plane.registry.spec import parse_spec
    from control_plane.translate.clusters import set_load_balancing

    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    raw: Any = policy
    if policy == "utilization":
        raw = {
            "utilization": {
                "metric": weighting.metric,
                "blackout_period": f"{weighting.blackout_s:g}s",
                "weight_update_period": f"{weighting.weight_update_s:g}s",
            }
        }
    cluster = cluster_pb2.Cluster()
    set_load_balancing(cluster, spec=parse_spec({"load_balancing": raw}))
    policies: dict[str, Any] = json_format.MessageToDict(cluster.load_balancing_policy)
    return policies


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def bootstrap(
    *, listen: int, admin: int, replicas: list[int], weighting: Weighting = Weighting()
) -> dict[str, Any]:
    """A static Envoy: ``<policy>.bench`` routes to the cluster ``<policy>`` (no route timeout:
    an overloaded replica's queue shows as latency, not as 504s)."""
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    hcm = (
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager"
    )
    limit = 1_000_000
    return {
        "admin": {"address": _address(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _address(listen),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": hcm,
                                        "stat_prefix": "ingress",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": policy,
                                                    "domains": [f"{policy}.bench"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {
                                                                "cluster": policy,
                                                                "timeout": "0s",
                                                            },
                                                        }
                                                    ],
                                                }
                                                for policy in POLICIES
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": router},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": policy,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_balancing_policy": load_balancing_policy(policy, weighting=weighting),
                    "circuit_breakers": {
                        "thresholds": [
                            {
                                "max_connections": limit,
                                "max_pending_requests": limit,
                                "max_requests": limit,
                            }
                        ]
                    },
                    "load_assignment": {
                        "cluster_name": policy,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": _address(p)}} for p in replicas
                                ]
                            }
                        ],
                    },
                }
                for policy in POLICIES
            ],
        },
    }


@dataclass
class Segment:
    """What one policy's segment of load measured."""

    latencies_ms: list[float]
    lags_ms: list[float]
    replicas: dict[str, int]
    errors: dict[str, int]  # what went wrong (a status, an exception's name) -> how often

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, str]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return status, body.decode(errors="replace")


async def open_loop(
    *,
    port: int,
    policy: str,
    rate: float,
    seconds: float,
    warmup: float,
    shape: Shape,
    seed: int,
) -> Segment:
    """Poisson arrivals at ``rate`` for ``warmup + seconds``; those scheduled after the warm-up
    are counted. Returns once every request has its answer."""
    rng = random.Random(seed)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened = 0
    segment = Segment(latencies_ms=[], lags_ms=[], replicas={}, errors={})

    async def fire(scheduled: float, cost: float, counted: bool) -> None:
        nonlocal opened
        path = "/" if cost == 1 else f"/?cost={cost:g}"
        request = f"GET {path} HTTP/1.1\r\nHost: {policy}.bench\r\n\r\n".encode()
        if idle:
            reader, writer = idle.pop()
        elif opened >= MAX_CONNECTIONS:
            if counted:
                segment.error(f"over {MAX_CONNECTIONS} connections")
            return
        else:
            opened += 1
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError as exc:
                opened -= 1
                if counted:
                    segment.error(type(exc).__name__)
                return
        lag = time.perf_counter() - scheduled
        try:
            status, body = await _exchange(reader, writer, request)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            opened -= 1
            writer.close()
            if counted:
                segment.error(type(exc).__name__)
            return
        idle.append((reader, writer))
        if not counted:
            return
        if status != 200:
            segment.error(f"status {status}")
            return
        segment.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        segment.lags_ms.append(lag * 1000)
        segment.replicas[body] = segment.replicas.get(body, 0) + 1

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05
    counted_from = start + warmup
    end = counted_from + seconds
    scheduled = start
    while True:
        scheduled += rng.expovariate(rate)
        if scheduled >= end:
            break
        cost = shape.expensive_cost if rng.random() < shape.expensive_share else 1.0
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(scheduled, cost, scheduled >= counted_from)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return segment


def _weights_in_force(admin: str, names: dict[str, str]) -> dict[str, int]:
    """The utilization cluster's weights by replica once Envoy uses the reports (some weight
    above the 1 every host starts with): a short segment on a busy machine can end before the
    blackout does; Envoy then applies the last reports without more traffic. What it has after
    10 s otherwise."""

    def read() -> dict[str, int]:
        return {names[p]: w for p, w in _weights(admin, "utilization").items()}

    try:
        return wait_until(
            lambda: (lambda w: w if max(w.values(), default=0) > 1 else None)(read()),
            timeout=10,
            interval=0.05,
            what="Envoy's weights from the reports",
        )
    except AssertionError:
        return read()


def _weights(admin: str, cluster: str) -> dict[str, int]:
    """Envoy's current weight of each host of ``cluster`` (port -> weight), from /clusters."""
    status, text = http_get(f"http://{admin}/clusters?format=json")
    if status != 200:
        return {}
    found: dict[str, int] = {}
    for status_ in json.loads(text).get("cluster_statuses", []):
        if status_.get("name") != cluster:
            continue
        for host in status_.get("host_statuses", []):
            port = host["address"]["socket_address"]["port_value"]
            found[str(port)] = int(host.get("weight", 0))
    return found


def summarize(segments: list[Segment], *, names: dict[str, str]) -> dict[str, Any]:
    """One policy's segments -> n, p50 / p99 / p99.9 (None under too few samples), max,
    each replica's share, errors and the generator's lag."""
    values = [v for s in segments for v in s.latencies_ms]
    lags = [v for s in segments for v in s.lags_ms]
    n = len(values)
    counts: dict[str, int] = {}
    for s in segments:
        for replica, count in s.replicas.items():
            counts[replica] = counts.get(replica, 0) + count
    return {
        "n": n,
        "p50_ms": round(statistics.median(values), 1) if values else None,
        "p99_ms": round(percentile(values, 99), 1) if n >= MIN_FOR_P99 else None,
        "p999_ms": round(percentile(values, 99.9), 1) if n >= MIN_FOR_P999 else None,
        "max_ms": round(max(values), 1) if values else None,
        "share": {
            name: round(counts.get(name, 0) / max(n, 1), 3) for name in sorted(names.values())
        },
        "errors": sum(sum(s.errors.values()) for s in segments),
        "error_kinds": _merged([s.errors for s in segments]),
        "lag_p99_ms": round(percentile(lags, 99), 2) if lags else None,
        "lag_max_ms": round(max(lags), 2) if lags else None,
        "late": bool(lags) and percentile(lags, 99) > LATE_MS,
        # Each segment's own lag p99, in the order run: which round the machine was busy in.
        "segment_lag_p99_ms": [
            round(percentile(s.lags_ms, 99), 2) if s.lags_ms else None for s in segments
        ],
    }


def _merged(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for one in counts:
        for kind, count in one.items():
            out[kind] = out.get(kind, 0) + count
    return out


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def run_shape(
    shape: Shape,
    workdir: Path,
    *,
    seconds: float,
    rounds: int,
    warmup: float,
    load: float,
    weighting: Weighting = Weighting(),
) -> dict[str, Any]:
    """Every policy, ``rounds`` segments each (the order rotating), on one Envoy and one
    replica process."""
    ports = [free_port() for _ in shape.factors]
    names = {str(port): f"r{i}" for i, port in enumerate(ports)}
    replicas = Process(
        [
            sys.executable,
            "-m",
            "bench.orca_replicas",
            "--base-ms",
            str(shape.base_ms),
            *[
                arg
                for i, (port, factor) in enumerate(zip(ports, shape.factors, strict=True))
                for arg in ("--replica", f"r{i}:{port}:{WORKERS}:{factor:g}")
            ],
        ],
        workdir / f"replicas-{shape.name}.log",
    )
    listen, admin = free_port(), free_port()
    path = workdir / f"envoy-{shape.name}.json"
    path.write_text(
        json.dumps(bootstrap(listen=listen, admin=admin, replicas=ports, weighting=weighting))
    )
    envoy = Process(
        [
            ENVOY,
            "-c",
            str(path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ],
        workdir / f"envoy-{shape.name}.log",
    )
    rate = round(load * shape.capacity(), 1)
    try:
        replicas.start()
        envoy.start()
        wait_until(
            lambda: (
                all(
                    http_get(f"http://127.0.0.1:{listen}/", host=f"{p}.bench")[0] == 200
                    for p in POLICIES
                )
                or not (envoy.alive() and replicas.alive())
            ),
            timeout=30,
            what="Envoy routes to the replicas",
        )
        assert envoy.alive(), f"envoy exited:\n{envoy.log()}"
        assert replicas.alive(), f"replicas exited:\n{replicas.log()}"
        segments: dict[str, list[Segment]] = {p: [] for p in POLICIES}
        weights: list[dict[str, int]] = []
        for r in range(rounds):
            for policy in POLICIES[r % 3 :] + POLICIES[: r % 3]:
                segments[policy].append(
                    asyncio.run(
                        open_loop(
                            port=listen,
                            policy=policy,
                            rate=rate,
                            seconds=seconds,
                            warmup=warmup,
                            shape=shape,
                            seed=r,
                        )
                    )
                )
                if policy == "utilization":
                    weights.append(_weights_in_force(f"127.0.0.1:{admin}", names))
    finally:
        envoy.stop()
        replicas.stop()
    rows = {p: summarize(segments[p], names=names) for p in POLICIES}
    util = rows["utilization"]
    return {
        "shape": shape.name,
        "what": shape.what,
        "rate": rate,
        "capacity": round(shape.capacity(), 1),
        "base_ms": shape.base_ms,
        "seconds": seconds,
        "rounds": rounds,
        "warmup_s": warmup,
        "policies": rows,
        "utilization_weights": weights,
        "ratio": {
            other: {
                q: _ratio(util[f"{q}_ms"], rows[other][f"{q}_ms"]) for q in ("p50", "p99", "p999")
            }
            for other in ("least_request", "round_robin")
        },
    }


def run(
    workdir: Path,
    *,
    seconds: float,
    rounds: int = 1,
    warmup: float = 3.0,
    load: float = 0.7,
    shapes: tuple[Shape, ...] = SHAPES,
    weighting: Weighting = Weighting(),
) -> dict[str, Any]:
    """Every shape in turn (see the module docstring)."""
    return {
        "workers": WORKERS,
        "metric": weighting.metric,
        "blackout_s": weighting.blackout_s,
        "weight_update_s": weighting.weight_update_s,
        "load": load,
        "shapes": [
            run_shape(
                shape,
                workdir,
                seconds=seconds,
                rounds=rounds,
                warmup=warmup,
                load=load,
                weighting=weighting,
            )
            for shape in shapes
        ],
    }


def _cell(row: dict[str, Any], q: str) -> Any:
    value = row[f"{q}_ms"]
    return value if value is not None else f"max of {row['n']}: {row['max_ms']}"


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Balancing by reported load (ORCA) vs least-request vs round robin, one Envoy, the same "
        f"{REPLICAS} replicas of {result['workers']} workers (queue beyond them), open-loop "
        f"Poisson arrivals at {round(result['load'] * 100)}% of capacity; utilization = "
        f"client_side_weighted_round_robin on `{result['metric']}` and measured "
        f"rps, blackout {result['blackout_s']} s, weight update {result['weight_update_s']} s; "
        "ms from the scheduled send; LATE: the generator's send lag had a p99 over "
        f"{LATE_MS:g} ms, the policy did not get the schedule (`python -m bench.orca`)",
        "| shape | policy | N | p50 | p99 | p99.9 | max | share r0 / r1 / r2 / r3 | errors | "
        "generator lag p99 / max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape in result["shapes"]:
        for policy in POLICIES:
            row = shape["policies"][policy]
            share = " / ".join(f"{v:.2f}" for v in row["share"].values())
            lines.append(
                f"| {shape['shape']} ({shape['rate']:g}/s) | {policy} | {row['n']} | "
                f"{_cell(row, 'p50')} | {_cell(row, 'p99')} | {_cell(row, 'p999')} | "
                f"{row['max_ms']} | {share} | {row['errors']} | "
                f"{row['lag_p99_ms']} / {row['lag_max_ms']}{' LATE' if row['late'] else ''} |"
            )
    for shape in result["shapes"]:
        parts = []
        for other, ratio in shape["ratio"].items():
            cells = ", ".join(
                f"{q.replace('p999', 'p99.9')} {v}x" for q, v in ratio.items() if v is not None
            )
            parts.append(f"utilization / {other}: {cells or 'too few samples'}")
        lines.append(f"{shape['shape']} ({shape['what']}): " + "; ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0, help="Counted, per segment.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--load", type=float, default=0.7, help="Share of capacity.")
    parser.add_argument(
        "--weight-update", type=float, default=Weighting().weight_update_s, help="s, >= 0.1."
    )
    parser.add_argument("--metric", choices=METRICS, default=Weighting().metric)
    parser.add_argument("--shape", choices=[s.name for s in SHAPES], action="append")
    args = parser.parse_args(argv)
    for name in ("seconds", "rounds", "warmup", "load"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be > 0, got {getattr(args, name)}")
    shapes = tuple(s for s in SHAPES if not args.shape or s.name in args.shape)
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        result = run(
            Path(tmp),
            seconds=args.seconds,
            rounds=args.rounds,
            warmup=args.warmup,
            load=args.load,
            shapes=shapes,
            weighting=Weighting(metric=args.metric, weight_update_s=args.weight_update),
        )
    print("\n".join(table(result)))
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "orca", "git_revision": git_revision(), "result": result}
    path = RESULTS / "orca.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
