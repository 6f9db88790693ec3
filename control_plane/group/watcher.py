"""The host's one registry watcher under ``serve --workers N`` (N >= 2):
``python -m control_plane.group.watcher``, started (and restarted when it dies) by the
supervisor, its settings as JSON on stdin.

It follows the registry exactly as a lone ``serve`` does (``Registry.watch``, with the same
backoff and ``registry_degraded`` log when the store fails), runs the lease cleanup once for
the host, and serves its workers on a Unix socket in a directory only this user can enter:

- a connection that sends ``follow\\n`` receives the current state in full, then one delta per
  change (``group/handoff.py``), in order; while the store cannot be read it receives the error
  first (the worker reports itself degraded, as a lone process would). A follower more than
  ``MAX_BEHIND_BYTES`` behind (its socket's buffer) is disconnected: it reconnects and starts
  again from the full state, rather than the watcher holding an unbounded queue for it;
- ``metrics\\n`` receives this process's Prometheus exposition (its registry polls, the store's
  health), which the supervisor adds to the group's ``/metrics`` as ``worker="watcher"``.

Any other first line, or none within ``HELLO_TIMEOUT``, closes the connection. Like a worker,
it stops itself when its supervisor dies (``PR_SET_PDEATHSIG``, else asking now and then).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys

import structlog
from prometheus_client import REGISTRY, generate_latest

from control_plane import logs, metrics
from control_plane.group.handoff import Publisher, encode
from control_plane.group.orphan import ORPHAN_CHECK_SECONDS, ask_for_parent_death_signal
from control_plane.registry import open_registry
from control_plane.registry.cleanup import BACKOFF_INITIAL, BACKOFF_MAX, run_cleanup
from control_plane.registry.errors import RegistryError
from control_plane.registry.model import Registry

log = structlog.get_logger("routeplane.watcher")

MAX_SETTINGS_BYTES = 1 << 20
HELLO_TIMEOUT = 5.0  # seconds a new connection gets to say what it wants
MAX_HELLO_BYTES = 64
# A follower this far behind (bytes queued on its socket) is disconnected and starts again.
MAX_BEHIND_BYTES = 64 << 20


class Watcher:
    """Follows ``registry`` and hands every change to the connected followers."""

    def __init__(self, registry: Registry, *, poll_interval: float | None) -> None:
        self.registry = registry
        self.poll_interval = poll_interval or registry.default_poll_interval
        self.publisher = Publisher(secrets.token_hex(8))
        self.error = ""
        self._followers: set[asyncio.StreamWriter] = set()
        self._full: tuple[int, bytes] | None = None  # the current state's full frame, by seq

    async def run(self) -> None:
        """Follow the registry until cancelled; reconnect with backoff when it fails."""
        backoff = BACKOFF_INITIAL
        while True:
            try:
                async for state in self.registry.watch(poll_interval=self.poll_interval):
                    if self.error:
                        log.info("registry_recovered")
                        self.error = ""
                        metrics.DEGRADED.set(0)
                    backoff = BACKOFF_INITIAL
                    message = self.publisher.publish(state)
                    if message is not None:
                        self._send(encode(message))
            except RegistryError as exc:
                if self.error != str(exc):
                    log.warning("registry_degraded", error=str(exc), retry_in=backoff)
                self.error = str(exc)
                metrics.DEGRADED.set(1)
                self._send(encode(self.publisher.error(self.error)))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def close(self) -> None:
        """Disconnect every follower (they reconnect to the next watcher)."""
        for writer in list(self._followers):
            writer.close()
        self._followers.clear()

    def _send(self, frame: bytes) -> None:
        for writer in list(self._followers):
            behind = writer.transport.get_write_buffer_size()
            if behind > MAX_BEHIND_BYTES:
                log.warning("follower_dropped", behind_bytes=behind, limit=MAX_BEHIND_BYTES)
                self._followers.discard(writer)
                writer.close()
                continue
            writer.write(frame)

    def _full_frame(self) -> bytes | None:
        message = self.publisher.current()
        if message is None:
            return None
        if self._full is None or self._full[0] != message.seq:
            self._full = (message.seq, encode(message))
        return self._full[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: ``follow`` or ``metrics``."""
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = await reader.readuntil(b"\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        try:
            if hello == b"metrics\n":
                writer.write(generate_latest(REGISTRY))
                await writer.drain()
            elif hello == b"follow\n":
                if self.error:
                    writer.write(encode(self.publisher.error(self.error)))
                else:
                    full = self._full_frame()
                    if full is not None:
                        writer.write(full)
                    self._followers.add(writer)
                    # A follower sends nothing more: read until it goes.
                    while await reader.read(MAX_HELLO_BYTES):
                        pass
        except OSError:
            pass
        finally:
            self._followers.discard(writer)
            writer.close()


async def _main(settings: dict[str, object]) -> None:
    path = str(settings["socket"])
    parent = int(str(settings["parent"]))
    poll = settings.get("poll_interval")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        loop.add_signal_handler(sig, stop.set)
    registry = await asyncio.to_thread(open_registry, str(settings["registry_url"]))
    try:
        watcher = Watcher(registry, poll_interval=float(str(poll)) if poll is not None else None)
        server = await asyncio.start_unix_server(watcher.serve, path=path, limit=MAX_HELLO_BYTES)
        os.chmod(path, 0o600)
        log.info("watcher_started", pid=os.getpid(), socket=path, registry=registry.url)

        async def orphaned() -> None:
            while os.getppid() == parent:  # noqa: ASYNC110 - no event says a parent died
                await asyncio.sleep(ORPHAN_CHECK_SECONDS)
            stop.set()

        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(watcher.run()),
                tasks.create_task(run_cleanup(registry)),
                tasks.create_task(orphaned()),
            ]
            await stop.wait()
            for task in running:
                task.cancel()
        server.close()
        watcher.close()
    finally:
        await asyncio.to_thread(registry.close)
    log.info("watcher_stopped", pid=os.getpid())


def main() -> None:
    """The watcher: settings as JSON on stdin (the registry URL, the poll interval, the socket
    path, the supervisor's pid, logging), then follow until SIGTERM."""
    settings = json.loads(sys.stdin.buffer.read(MAX_SETTINGS_BYTES))
    logs.configure(level=settings["log_level"], json=settings["log_json"])
    ask_for_parent_death_signal()
    # Ctrl-C reaches the whole process group: the supervisor stops the watcher last, by SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_main(settings))


if __name__ == "__main__":
    main()
