"""A sample replica process: serve, register with the registry, renew the lease, deregister.

``routeplane samples replica --kind http|ws|grpc --name N --listen ADDR --server S --region R
--registry URL [--revision V]``. With a revision the replica registers with it and answers as
``N@V`` wherever it answers ``N`` without one (the HTTP echo's body and ``X-Replica`` header,
the WebSocket and gRPC echoes' replies), so a response names its revision. ``--error-percent P``
(HTTP only) answers 500 to P% of its requests, evenly spread (``http_echo``): a failing version
to roll out and roll back. SIGTERM/SIGINT
deregisters (a clean exit, which prints ``NAME: deregistered ID`` on stderr); SIGKILL leaves
the lease to run out, and the control plane removes the replica when it does.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

from control_plane.agent import ReplicaAgent
from control_plane.registry import validate


def run(
    *,
    kind: str,
    name: str,
    listen: str,
    advertise: str,
    server: str,
    region: str,
    zone: str,
    registry: str,
    lease_seconds: float,
    revision: str = "",
    error_percent: int = 0,
) -> None:
    revision = validate.revision("--revision", revision)  # before anything serves
    if error_percent and kind != "http":
        raise ValueError(f"--error-percent {error_percent}: only --kind http can fail on demand")
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    shutdown = _start(
        kind,
        name=f"{name}@{revision}" if revision else name,
        host=host,
        port=port,
        error_percent=error_percent,
    )
    agent = ReplicaAgent(
        registry_url=registry,
        server=server,
        address=advertise,
        region=region,
        zone=zone,
        lease_seconds=lease_seconds,
        revision=revision,
    )
    replica_id = agent.register(ready=True)
    try:
        stop.wait()
    finally:
        try:
            agent.deregister()
            print(f"{name}: deregistered {replica_id}", file=sys.stderr, flush=True)
        finally:
            shutdown()


def _start(kind: str, *, name: str, host: str, port: int, error_percent: int = 0):  # type: ignore[no-untyped-def]
    if kind == "http":
        from control_plane.dev.samples.http_echo import make_server

        http = make_server(name=name, host=host, port=port, error_percent=error_percent)
        threading.Thread(target=http.serve_forever, daemon=True).start()

        def stop_http() -> None:
            http.shutdown()
            http.server_close()

        return stop_http
    if kind == "grpc":
        from control_plane.dev.samples.grpc_echo import make_server as make_grpc

        rpc, _ = make_grpc(name=name, host=host, port=port)
        rpc.start()
        return lambda: rpc.stop(grace=1)
    if kind == "ws":
        from websockets.asyncio.server import serve

        from control_plane.dev.samples.ws_echo import handler_for

        loop = asyncio.new_event_loop()
        done = asyncio.Event()
        ready = threading.Event()

        async def main() -> None:
            async with serve(handler_for(name), host, port):
                ready.set()
                await done.wait()

        thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
        thread.start()
        ready.wait(10)

        def stop_ws() -> None:
            loop.call_soon_threadsafe(done.set)
            thread.join(5)

        return stop_ws
    raise ValueError(f"unknown kind {kind!r}")
