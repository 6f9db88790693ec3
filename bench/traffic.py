"""A traffic split change against ordinary propagation, in the same run (issue 26).

Starts a control plane (SQLite registry), a real Envoy and echo replicas on loopback, one server.
Ordinary propagation, as ``bench.propagation`` measures it: the replica in service is removed
(503 waited for) and another registered; the clock runs from the registry's commit timestamp to
the first request the new replica answers. A split change: the server has two revisions, v1 and
v2 (a replica each), and each try writes its spec (``put_server``) with the split moved from
100% on one to 100% on the other; the clock runs from that commit to the first request the
other revision answers (Envoy routing by the new weights: a RouteConfiguration change, the
clusters stay). The same keep-alive poller watches both. Prints a table and writes JSON to
``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench.probe import HOST, Poller, summary, watch
from bench.propagation import RESULTS, commit_time, git_revision
from bench.stats import tail, tails_name
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy
from harness.waiting import wait_until


def _split(revision: str) -> dict[str, Any]:
    return {"traffic": [{"revision": revision, "percent": 100}]}


def run(workdir: Path, *, tries: int, ads: str = "delta") -> dict[str, Any]:
    """``tries`` replica swaps, then ``tries`` split changes, against one control plane and
    one Envoy."""
    cp = ControlPlane.create(workdir)
    cp.start()
    envoy = None
    plain = [EchoThread(name="replica-a"), EchoThread(name="replica-b")]
    revisions = {"v1": EchoThread(name="echo-v1"), "v2": EchoThread(name="echo-v2")}
    try:
        cp.wait_ready()
        envoy = Envoy.create(
            workdir, node_id=f"bench-{ads}", region="us-west", xds=[cp.xds], ads=ads
        )
        envoy.start()
        envoy.wait_live()
        registry = open_registry(cp.registry)
        registry.create_server(name="echo", hostnames=[HOST], protocol="http")
        poller = Poller(envoy.listen)
        current: str | None = None

        def measured(wanted: tuple[int, str], write: Any) -> float:
            seen: list[float] = []
            watcher = threading.Thread(target=watch, args=(poller, wanted, seen), daemon=True)
            watcher.start()
            write()
            committed = commit_time(cp.registry)
            watcher.join(timeout=10)
            assert seen, f"{wanted} never answered"
            return (seen[0] - committed) * 1000

        def swap(attempt: int) -> float:
            nonlocal current
            if current is not None:
                registry.deregister_replica(current)
                wait_until(
                    lambda: poller.get()[0] == 503,
                    timeout=10,
                    interval=0.001,
                    what="503 after deregistering",
                )
            replica = plain[attempt % 2]

            def write() -> None:
                nonlocal current
                current = registry.register_replica(
                    server="echo", address=replica.address, region="us-west"
                ).id

            return measured((200, f"{replica.name}\n"), write)

        swap(0)  # warm-up
        ordinary = [swap(i + 1) for i in range(tries)]
        if current is not None:
            registry.deregister_replica(current)
        registry.put_server(name="echo", hostnames=[HOST], protocol="http", spec=_split("v1"))
        for revision, replica in revisions.items():
            registry.register_replica(
                server="echo", address=replica.address, region="us-west", revision=revision
            )
        wait_until(lambda: poller.get() == (200, "echo-v1\n"), timeout=30, what="v1 in service")

        def move(attempt: int) -> float:
            revision = ("v2", "v1")[attempt % 2]
            return measured(
                (200, f"echo-{revision}\n"),
                lambda: registry.put_server(
                    name="echo", hostnames=[HOST], protocol="http", spec=_split(revision)
                ),
            )

        move(0)  # warm-up: now on v2
        splits = [move(i + 1) for i in range(tries)]
        registry.close()
        ordinary_summary, split_summary = summary(ordinary), summary(splits)
        ratio = {
            q: round(split_summary[f"{q}_ms"] / max(ordinary_summary[f"{q}_ms"], 0.001), 2)
            for q in ("p50", "p90")
        }
        if split_summary["p99_ms"] is not None and ordinary_summary["p99_ms"] is not None:
            ratio["p99"] = round(
                split_summary["p99_ms"] / max(ordinary_summary["p99_ms"], 0.001), 2
            )
        return {
            "ads": ads,
            "tries": tries,
            "ordinary": ordinary_summary,
            "split": split_summary,
            "ratio": ratio,
        }
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
        for replica in [*plain, *revisions.values()]:
            replica.stop()


def table(row: dict[str, Any]) -> list[str]:
    last = tails_name([row["ordinary"], row["split"]])
    ratios = " / ".join(
        f"{q} {row['ratio'][q]}x" for q in ("p50", "p90", "p99") if q in row["ratio"]
    )
    lines = [
        "A traffic split change against ordinary propagation, the same control plane and Envoy "
        f"(`routeplane serve`, SQLite, api writes, 1 Envoy, {row['ads']}): the registry's commit "
        "timestamp -> the first request answered by the new replica (ordinary: a replica swap) or "
        f"the new revision (split: 100% moved from one revision to the other); N = {row['tries']} "
        "tries each, ms",
        f"| change | N | p50 | p90 | {last} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("ordinary", "split"):
        s = row[name]
        lines.append(f"| {name} | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {tail(s)} |")
    lines.append(f"ratio split / ordinary: {ratios}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=200)
    parser.add_argument("--ads", default="delta", choices=["delta", "sotw"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        row = run(Path(tmp), tries=args.tries, ads=args.ads)
    print("\n" + "\n".join(table(row)))
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "traffic", "git_revision": git_revision(), "result": row}
    path = RESULTS / "traffic.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
