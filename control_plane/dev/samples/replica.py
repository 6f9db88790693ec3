"""A sample replica process: serve, register with the registry, renew the lease, deregister.

``routeplane samples replica --kind http|ws|grpc --name N --listen ADDR --server S --region R
--registry URL [--revision V]``. With a revision the replica registers with it and answers as
``N@V`` wherever it answers ``N`` without one (the HTTP echo's body and ``X-Replica`` header,
the WebSocket and gRPC echoes' replies), so a response names its revision. ``--error-percent P``
(HTTP only) answers 500 to P% of its requests, evenly spread (``http_echo``): a failing version
to roll out and roll back. ``--report METRIC=VALUE`` (repeatable) or ``--report-file PATH``
(the same lines, re-read when the file changes) makes it report its load with ORCA: the HTTP
echo adds the ``endpoint-load-metrics`` header (TEXT; binary with ``--report-binary``), the
gRPC echo the ``endpoint-load-metrics-bin`` trailer and the OpenRcaService (``reporting``).
A WebSocket replica cannot report (a per-response report means nothing on a long-lived
connection): ``--kind ws`` with a report is refused. SIGTERM/SIGINT
deregisters (a clean exit, which prints ``NAME: deregistered ID`` on stderr); SIGKILL leaves
the lease to run out, and the control plane removes the replica when it does.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

from control_plane.agent import ReplicaAgent
from control_plane.dev.samples.reporting import SampleReport
from control_plane.registry import validate


def report_source(
    *, assignments: tuple[str, ...] | list[str], report_file: str, kind: str
) -> SampleReport:
    """The report the flags ask for, checked before anything serves: ValueError naming the
    flag and value."""
    from control_plane.orca import parse_assignments
    from control_plane.orca.file import ReportFile

    if (assignments or report_file) and kind == "ws":
        flag = "--report-file" if report_file else "--report"
        raise ValueError(f"{flag}: --kind ws cannot report load (only http and grpc replicas can)")
    if assignments and report_file:
        raise ValueError("--report and --report-file: give one or the other")
    if report_file:
        return ReportFile(report_file)
    if not assignments:
        return None
    for assignment in assignments:
        try:
            parse_assignments([assignment])
        except ValueError as exc:
            raise ValueError(f"--report {assignment!r}: {exc}") from None
    try:
        return parse_assignments(assignments)
    except ValueError as exc:
        raise ValueError(f"--report: {exc}") from None


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
    report: tuple[str, ...] = (),
    report_file: str = "",
    report_binary: bool = False,
) -> None:
    revision = validate.revision("--revision", revision)  # before anything serves
    if error_percent and kind != "http":
        raise ValueError(f"--error-percent {error_percent}: only --kind http can fail on demand")
    if report_binary and kind != "http":
        raise ValueError("--report-binary: only --kind http has a header form to choose")
    source = report_source(assignments=report, report_file=report_file, kind=kind)
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
        report=source,
        report_binary=report_binary,
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


def _start(  # type: ignore[no-untyped-def]
    kind: str,
    *,
    name: str,
    host: str,
    port: int,
    error_percent: int = 0,
    report: SampleReport = None,
    report_binary: bool = False,
):
    if kind == "http":
        from control_plane.dev.samples.http_echo import make_server

        http = make_server(
            name=name,
            host=host,
            port=port,
            error_percent=error_percent,
            report=report,
            report_binary=report_binary,
        )
        threading.Thread(target=http.serve_forever, daemon=True).start()

        def stop_http() -> None:
            http.shutdown()
            http.server_close()

        return stop_http
    if kind == "grpc":
        from control_plane.dev.samples.grpc_echo import GrpcEchoThread

        rpc = GrpcEchoThread(name=name, host=host, port=port, report=report)
        return rpc.stop
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
