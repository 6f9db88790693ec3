"""A sample proxyless gRPC client: calls the Echo sample (``grpc_echo``) on an ``xds:///`` target.

gRPC's own xDS client reads routeplane's snapshots (API listener, cluster, endpoints) and picks
replicas itself: no proxy in between. One line is printed per reply (``<replica>:<text>``; for
a server stream, one per message), and ``error <CODE>: <details>`` per failed call, flushed at
once, so a script or test can follow it. ``routeplane samples grpc-client`` is the command.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Sequence

from control_plane.dev.samples.grpc_echo import STREAM, UNARY

BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP_CONFIG"


def run(
    *,
    target: str,
    bootstrap: str,
    calls: int,
    interval: float,
    stream: int,
    stream_interval_ms: int,
    message: str,
    headers: Sequence[tuple[str, str]],
    timeout: float,
    out: Callable[[str], None],
) -> int:
    """Make ``calls`` calls (0: until SIGTERM/SIGINT), ``interval`` seconds apart; returns how
    many failed. ``bootstrap`` is the gRPC xDS bootstrap (JSON text)."""
    # gRPC reads its xDS bootstrap when the first xds: channel is created, process-wide.
    os.environ[BOOTSTRAP_ENV] = bootstrap
    import grpc

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    failures = made = 0
    with grpc.insecure_channel(target) as channel:
        unary = channel.unary_unary(UNARY)
        streaming = channel.unary_stream(STREAM)
        while not stop.is_set() and (calls == 0 or made < calls):
            if made and interval and stop.wait(interval):
                break
            made += 1
            try:
                if stream:
                    request = f"{stream}:{stream_interval_ms}".encode()
                    for reply in streaming(request, timeout=timeout, metadata=headers):
                        out(reply.decode())
                    out("stream done")
                else:
                    out(unary(message.encode(), timeout=timeout, metadata=headers).decode())
            except grpc.RpcError as exc:
                failures += 1
                code = exc.code()
                details = exc.details()
                out(f"error {code.name if code else 'UNKNOWN'}: {details}")
    return failures


def load_bootstrap(path: str) -> str:
    """A bootstrap file's text, checked to be JSON (ValueError naming the file otherwise)."""
    with open(path, encoding="utf-8") as file:
        text = file.read()
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--bootstrap {path!r}: not JSON: {exc}") from None
    return text
