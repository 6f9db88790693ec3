"""An open-loop (fixed-rate) HTTP/1.1 load generator with keep-alive connections.

Requests are scheduled at a fixed rate; latency runs from each request's *scheduled* time, so
a stall is charged to every request it delays (no coordinated omission). Python adds its own
overhead to every sample; it is the same for every target measured in one run, so compare
targets as ratios. ``wrk``/``h2load`` were not used: they are not on a fresh machine.
"""

from __future__ import annotations

import asyncio
import time


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return status


async def http_fixed_rate(
    *, host: str, port: int, host_header: str, rate: float, seconds: float, connections: int = 8
) -> tuple[list[float], int]:
    """Latencies in ms and the number of errors (non-200 or broken connections)."""
    request = f"GET / HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    errors = 0

    async def fire(scheduled: float) -> None:
        nonlocal errors
        reader, writer = await pool.get()
        try:
            status = await _one(reader, writer, request)
            if status != 200:
                errors += 1
            latencies.append((time.perf_counter() - scheduled) * 1000)
            pool.put_nowait((reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            writer.close()
            pool.put_nowait(await asyncio.open_connection(host, port))

    tasks = []
    start = time.perf_counter() + 0.05
    total = int(rate * seconds)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return latencies, errors
