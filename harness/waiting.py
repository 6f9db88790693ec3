"""Free loopback ports and waiting on a condition with a deadline: what starting a real process
and then using it needs, in tests and benchmarks alike. Never a sleep as synchronisation."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


# Ports handed out lie below the kernel's ephemeral range (32768 and up here) and below the
# ranges mesh tests pick (10,000 and up, ``tests/meshes.py``): a port the kernel assigned (bind
# to 0) is free only until any process's next outgoing connection takes it as its source port,
# and with two test processes (``make test``: pytest-xdist) that happened (a control plane's
# admin port was taken between ``free_port`` and its bind). Each xdist worker has its own slice
# and walks it in order, so two workers never hand out the same port, and one worker reuses a
# port only after its whole slice.
PORTS_LOW, PORTS_HIGH = 2_000, 8_000
_lock = threading.Lock()
_next: int | None = None


def _slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    index = int(worker[2:]) if worker[:2] == "gw" and worker[2:].isdigit() else 0
    count = max(1, int(workers) if workers.isdigit() else 1)
    size = (PORTS_HIGH - PORTS_LOW) // count
    low = PORTS_LOW + (index % count) * size
    return low, low + size


def free_port() -> int:
    """A loopback port nothing listens on now, and that no outgoing connection can take."""
    global _next
    low, high = _slice()
    with _lock:
        if _next is None or not low <= _next < high:
            _next = random.randrange(low, high)
        for _ in range(high - low):
            port = _next
            _next = low + (_next + 1 - low) % (high - low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError(f"no free loopback port in {low}-{high - 1}")


def wait_until(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
        last = condition()
    return last
