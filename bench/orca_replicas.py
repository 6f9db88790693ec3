"""The replicas of ``bench.orca``: HTTP/1.1 backends with a fixed number of workers and a queue,
each reporting its load with ORCA (the ``endpoint-load-metrics`` header) on every response.

``python -m bench.orca_replicas --base-ms 40 --replica NAME:PORT:WORKERS:FACTOR ...`` serves
every replica from one asyncio loop (a separate process, so the load generator keeps its core).
A request ``GET /?cost=C`` takes ``base_ms * FACTOR * C`` ms of one worker (``asyncio.sleep``: a
simulated service time, the replica's CPU is not what is measured); a request beyond the
workers waits in a FIFO queue. The answer's body is the replica's name.

The report, computed when a response is written and sent in Envoy's TEXT form by routeplane's
own ORCA library (``control_plane.orca.LoadReport``):
- ``named_metrics.work``: the service time of every request in the replica (in service or
  queued, the one being answered included, so it is never 0), in seconds, over ``workers``: the
  work each worker has ahead of it. Not clipped to [0, 1]: a queue of expensive requests reads
  as more than a queue of cheap ones, which a request count cannot see. In seconds rather than
  in requests so that Envoy's weight (``rps / work``, truncated to an integer) stays large:
  a weight of 5 against 6 could not express a 10 % difference.
- ``named_metrics.busy``: the requests in the replica (in service or queued, the one answered
  included) over ``workers``, clipped to [0, 1]: busy workers plus queue over capacity, blind to
  what each request costs.
- ``rps_fractional``: requests completed per second, an exponentially decaying average over
  about one second (Envoy's weight is ``rps_fractional / utilization``).
Imports the standard library and ``control_plane.orca`` (stdlib only itself).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass, field

from control_plane.orca import LoadReport

# The decay of the rps average, s.
RPS_WINDOW_S = 1.0
# The longest request head a replica reads.
MAX_HEAD = 8192
# The largest cost a request may ask for.
MAX_COST = 1000.0


def report_header(*, work: float, busy: float, rps: float) -> str:
    """The ``endpoint-load-metrics`` value, in Envoy's TEXT form (values rounded; a float's
    drift below 0 is 0)."""
    return LoadReport(
        named_metrics={"work": round(max(work, 0.0), 6), "busy": round(max(busy, 0.0), 4)},
        rps_fractional=round(max(rps, 0.0), 3),
    ).to_text()


def parse_cost(head: bytes) -> float:
    """The ``cost`` query parameter of a request head's path (1 without one); a bad value is a
    ValueError naming it."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ValueError(f"request line {line!r} is not METHOD PATH VERSION")
    _, _, query = parts[1].partition("?")
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key == "cost":
            try:
                cost = float(value)
            except ValueError:
                cost = math.nan
            if not (math.isfinite(cost) and 0 < cost <= MAX_COST):
                raise ValueError(f"cost must be in (0, {MAX_COST}], got {value!r}")
            return cost
    return 1.0


@dataclass
class Replica:
    """One replica: ``workers`` workers taking ``base_s * factor * cost`` s a request."""

    name: str
    workers: int
    base_s: float
    factor: float
    in_system_s: float = 0.0  # service time of every request queued or in service
    in_system: int = 0  # requests queued or in service
    rps: float = 0.0
    last_completion: float = field(default_factory=time.monotonic)
    queue: asyncio.Queue[tuple[float, asyncio.Future[str]]] = field(default_factory=asyncio.Queue)

    async def work(self) -> None:
        while True:
            service, done = await self.queue.get()
            await asyncio.sleep(service)
            now = time.monotonic()
            decay = math.exp(-(now - self.last_completion) / RPS_WINDOW_S)
            self.rps = self.rps * decay + 1 / RPS_WINDOW_S
            self.last_completion = now
            header = report_header(
                work=self.in_system_s / self.workers,
                busy=min(1.0, self.in_system / self.workers),
                rps=self.rps,
            )
            self.in_system_s -= service
            self.in_system -= 1
            if not done.done():
                done.set_result(header)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = self.name.encode()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > MAX_HEAD:
                    break
                try:
                    cost = parse_cost(head)
                except ValueError as exc:
                    message = str(exc).encode()
                    writer.write(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(message), message)
                    )
                    await writer.drain()
                    continue
                service = self.base_s * self.factor * cost
                done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                self.in_system_s += service
                self.in_system += 1
                self.queue.put_nowait((service, done))
                header = await done
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nendpoint-load-metrics: %s\r\n\r\n%s"
                    % (len(body), header.encode(), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


async def serve(replicas: list[tuple[Replica, int]]) -> None:
    async with asyncio.TaskGroup() as group:
        for replica, port in replicas:
            for _ in range(replica.workers):
                group.create_task(replica.work())
            server = await asyncio.start_server(replica.handle, "127.0.0.1", port, backlog=4096)
            group.create_task(server.serve_forever())


def parse_replica(text: str, *, base_s: float) -> tuple[Replica, int]:
    """``NAME:PORT:WORKERS:FACTOR`` -> the replica and its port."""
    try:
        name, port, workers, factor = text.split(":")
        replica = Replica(name=name, workers=int(workers), base_s=base_s, factor=float(factor))
        if replica.workers < 1 or not replica.factor > 0:
            raise ValueError
        return replica, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--replica must be NAME:PORT:WORKERS:FACTOR (workers >= 1, factor > 0), got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-ms", type=float, required=True)
    parser.add_argument("--replica", action="append", required=True)
    args = parser.parse_args(argv)
    if not args.base_ms > 0:
        parser.error(f"--base-ms must be > 0, got {args.base_ms}")
    try:
        replicas = [parse_replica(text, base_s=args.base_ms / 1000) for text in args.replica]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    asyncio.run(serve(replicas))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
