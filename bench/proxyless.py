"""Propagation to a proxyless gRPC client, beside an Envoy: registry commit -> first RPC
answered by the new replica.

One control plane (SQLite registry), a real Envoy (delta ADS) and a gRPC client on
``xds:///tokens.local`` (gRPC's own xDS client, SotW ADS, in its own process: its bootstrap is
process-wide), two replicas of the gRPC Echo sample. Each try removes the replica in service
(both callers see calls fail), registers the other, and the clock runs from the registry's own
commit timestamp to the first reply from the new replica, for both callers of the same change.
Each caller is the same poll loop in a subprocess (unary calls, 0.5 ms apart): through the
Envoy's listener, or on the xds: target. ``python -m bench.proxyless [--tries N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.probe import summary
from bench.propagation import commit_time
from control_plane.bootstrap import render_grpc
from control_plane.dev.samples.grpc_echo import UNARY, GrpcEchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy
from harness.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
HOST = "tokens.local"


def poll(target: str, authority: str) -> None:
    """The caller: unary calls in a loop; prints ``<wall time> <replica|error>`` on each change
    of who answers (the bootstrap, for an xds: target, comes from the environment)."""
    import grpc

    options = [("grpc.default_authority", authority)] if authority else []
    last = ""
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(UNARY)
        while True:
            try:
                state = call(b"x", timeout=2).decode().split(":", 1)[0]
            except grpc.RpcError:
                state = "error"
            if state != last:
                print(f"{time.time():.6f} {state}", flush=True)
                last = state
            time.sleep(0.0005)  # a polling interval, not synchronisation


class Caller:
    """One poll loop in a subprocess, its changes collected as (wall time, state)."""

    def __init__(self, name: str, *, target: str, authority: str = "", env: dict[str, str]):
        self.name = name
        self.changes: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.proxyless", "--poll", target, "--authority", authority],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            at, _, state = line.strip().partition(" ")
            self.changes.append((float(at), state))

    def state(self) -> str:
        return self.changes[-1][1] if self.changes else ""

    def first(self, state: str, *, after: int) -> float | None:
        for at, seen in self.changes[after:]:
            if seen == state:
                return at
        return None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run(*, tries: int, workdir: Path) -> dict[str, object]:
    cp = ControlPlane.create(workdir)
    cp.start()
    envoy = None
    callers: list[Caller] = []
    replicas = [GrpcEchoThread(name="replica-a"), GrpcEchoThread(name="replica-b")]
    try:
        cp.wait_ready()
        envoy = Envoy.create(workdir, node_id="bench-envoy", region="us-west", xds=[cp.xds])
        envoy.start()
        envoy.wait_live()
        registry = open_registry(cp.registry)
        registry.put_server(name="tokens", hostnames=[HOST], protocol="grpc")
        bootstrap = render_grpc(
            node_id="bench-grpc", cluster="apps", region="us-west", xds=[cp.xds]
        )
        env = dict(os.environ)
        callers = [
            Caller("envoy", target=envoy.listen, authority=HOST, env=env),
            Caller(
                "proxyless",
                target=f"xds:///{HOST}",
                env={**env, "GRPC_XDS_BOOTSTRAP_CONFIG": bootstrap},
            ),
        ]
        current: str | None = None
        samples: dict[str, list[float]] = {c.name: [] for c in callers}

        def one_try(attempt: int) -> dict[str, float]:
            nonlocal current
            if current is not None:
                registry.deregister_replica(current)
                wait_until(
                    lambda: all(c.state() == "error" for c in callers),
                    timeout=20,
                    interval=0.001,
                    what="both callers failing after deregistering",
                )
            replica = replicas[attempt % 2]
            marks = {c.name: len(c.changes) for c in callers}
            current = registry.register_replica(
                server="tokens", address=replica.address, region="us-west"
            ).id
            committed = commit_time(cp.registry)
            wait_until(
                lambda: all(c.first(replica.name, after=marks[c.name]) for c in callers),
                timeout=20,
                interval=0.001,
                what="both callers answered by the new replica",
            )
            return {
                c.name: ((c.first(replica.name, after=marks[c.name]) or 0.0) - committed) * 1000
                for c in callers
            }

        one_try(0)  # warm-up: the first change also brings up the cluster and the channel
        for i in range(tries):
            for name, ms in one_try(i + 1).items():
                samples[name].append(ms)
        registry.close()
        return {"tries": tries, **{name: summary(values) for name, values in samples.items()}}
    finally:
        for caller in callers:
            caller.stop()
        if envoy is not None:
            envoy.stop()
        cp.stop()
        for replica in replicas:
            replica.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--poll", default="", help=argparse.SUPPRESS)
    parser.add_argument("--authority", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.poll:
        with contextlib.suppress(KeyboardInterrupt):
            poll(args.poll, args.authority)
        return 0
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        result = run(tries=args.tries, workdir=Path(tmp))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
