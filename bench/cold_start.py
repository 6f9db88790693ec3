"""Cold start in hold mode: what a held request pays on top of the replica's own boot.

A control plane (SQLite registry), a real Envoy and a server in ``cold_start: hold`` mode with no
replica. Each try sends a request (Envoy holds it), waits until routeplane has seen the demand
(the held request's cluster was asked for), registers a replica, and stops the clock when the
held request is answered: registry commit (its own commit timestamp) -> answered. Then the
replica goes and the next try waits until the Envoy's route is held again. Compare with the
propagation figure of the same run (a new replica for a server that is not held).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.probe import summary
from bench.propagation import commit_time
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy
from harness.waiting import wait_until

HOST = "gpu.local"


def _held_cluster(envoy: Envoy) -> str | None:
    dump = json.loads(envoy.admin_get("/config_dump?resource=dynamic_route_configs"))
    for config in dump.get("configs", []):
        for vhost in config.get("route_config", {}).get("virtual_hosts", []):
            if HOST in vhost.get("domains", []):
                route = vhost["routes"][-1]
                if "typed_per_filter_config" in route:  # the on-demand config: held
                    return str(route["route"]["cluster"])
    return None


def _cold_starts(admin: str) -> int:
    done = subprocess.run(
        [ROUTEPLANE, "load", "--json", "--server", "gpu", "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return sum(int(r["cold_starts"]) for r in json.loads(done.stdout) if r["region"] == "*")


def run(workdir: Path, *, tries: int) -> dict[str, Any]:
    cp = ControlPlane.create(workdir)
    cp.start()
    envoy: Envoy | None = None
    replicas = [EchoThread(name="gpu-a"), EchoThread(name="gpu-b")]
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.create_server(
            name="gpu",
            hostnames=[HOST],
            protocol="http",
            spec={"cold_start": {"mode": "hold", "timeout": "30s"}},
        )
        envoy = Envoy.create(workdir, node_id="bench-cold", region="us-west", xds=[cp.xds])
        envoy.start()
        envoy.wait_live()
        live = envoy
        samples: list[float] = []
        for attempt in range(tries + 1):  # the first is a warm-up
            wait_until(lambda: _held_cluster(live) is not None, timeout=10, what="held route")
            before = _cold_starts(cp.admin)
            answered: list[float] = []

            def send(answered: list[float] = answered) -> None:
                request = urllib.request.Request(f"http://{live.listen}/", headers={"Host": HOST})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        response.read()
                        if response.status == 200:
                            answered.append(time.time())
                except (OSError, urllib.error.URLError):
                    return

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            wait_until(
                lambda before=before: _cold_starts(cp.admin) > before,
                timeout=10,
                what="the demand signal",
            )
            replica = registry.register_replica(
                server="gpu", address=replicas[attempt % 2].address, region="us-west"
            )
            committed = commit_time(cp.registry)
            sender.join(timeout=30)
            assert answered, "the held request was not answered by the new replica"
            if attempt:
                samples.append((answered[0] - committed) * 1000)
            registry.deregister_replica(replica.id)
        registry.close()
        return {"tries": tries, "commit_to_held_answered": summary(samples)}
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
        for echo in replicas:
            echo.stop()


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        result = run(Path(tmp), tries=args.tries)
    s = result["commit_to_held_answered"]
    print(f"hold mode, commit -> held request answered: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
