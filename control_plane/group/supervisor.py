"""``serve --workers N``: the supervisor of N worker processes serving one xDS port, and of
the host's one registry watcher.

Each worker (``group/worker.py``) is a whole control plane (``app.serve``): its own pipeline and
cache, like an HA replica (versions are content hashes, so workers agree on them), fed by the
registry watcher (``group/watcher.py``: one watch of the registry for the host, handed to every
worker; restarted by ``WatcherKeeper`` whenever it exits, never stopping the group), binding
the xDS port with ``SO_REUSEPORT`` so the kernel spreads new connections over the workers, and
its admin API on a loopback port of its own, never the public one. Its identifier is the
group's with ``/wN`` appended, so a proxy can tell which worker serves it.

The supervisor (``supervise``, the ``serve`` the user started) checks that the xDS port is free,
starts the watcher and the workers (``python -m control_plane.group.worker``, the settings as
JSON on stdin so a token never shows in ``ps``), serves the public admin address with every
worker's view aggregated (``group/admin.py``, and the group's CSDS from ``group/csds.py``, the
watcher's metrics beside the workers'), and on SIGTERM/SIGINT stops them all: SIGTERM to each
worker, SIGKILL to any still running ``grace_seconds`` + ``STOP_MARGIN`` later, then the
watcher. A worker that exits on its own stops the group with exit code 1 (no restart: a crash
loop stays visible and the process manager that started ``serve`` restarts the whole group,
with its own backoff).

The wiring of processes only; it imports ``app`` and the rest of ``group/``, nothing of the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog

from control_plane import metrics
from control_plane.admin.server import AdminServer
from control_plane.app import (
    ServeConfig,
    split_host_port,
    start_admin,
    start_keda,
    warn_if_exposed,
)
from control_plane.group.admin import AggregateService
from control_plane.group.csds import merged
from control_plane.registry import open_registry
from control_plane.rollout.driver import PROBLEM_KIND as ROLLOUT_PROBLEM
from control_plane.rollout.driver import RolloutDriver, rates_of_rows
from control_plane.xds import csds

log = structlog.get_logger("routeplane.workers")

STOP_MARGIN = 2.0  # seconds a worker gets past grace_seconds before SIGKILL
# A watcher that lived this long is restarted at once; one that died sooner, after a backoff.
WATCHER_STEADY_SECONDS = 5.0
WATCHER_BACKOFF_INITIAL = 0.5
WATCHER_BACKOFF_MAX = 10.0
WATCHER_METRICS_TIMEOUT = 2.0
MAX_WATCHER_METRICS_BYTES = 16 << 20


def check_free(address: str) -> None:
    """OSError naming ``--xds-listen`` if something already listens on ``address``: workers
    share the port with each other only."""
    host, port = split_host_port(address, flag="--xds-listen")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # Like gRPC's own bind: a just-stopped group's connections in TIME_WAIT do not
            # hold the port; a listening socket still does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(where)
    except OSError as exc:
        raise OSError(f"cannot listen on --xds-listen {address}: {exc.strerror or exc}") from exc


def loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _start(module: str, settings: dict[str, Any]) -> asyncio.subprocess.Process:
    """``python -m module`` with ``settings`` as JSON on its stdin."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, stdin=asyncio.subprocess.PIPE
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps({**settings, "parent": os.getpid()}).encode())
    await process.stdin.drain()
    process.stdin.close()
    return process


async def _spawn(
    config: ServeConfig,
    *,
    siblings: list[str],
    watcher: str | None,
    log_level: str,
    log_json: bool | None,
) -> asyncio.subprocess.Process:
    settings = {
        "config": dataclasses.asdict(config),
        "siblings": siblings,
        "watcher": watcher,
        "log_level": log_level,
        "log_json": log_json,
    }
    return await _start("control_plane.group.worker", settings)


class WatcherKeeper:
    """The host's registry watcher (``group/watcher.py``), started again whenever it exits
    until ``run`` is cancelled: at once, or after a backoff (``WATCHER_BACKOFF_*``) when the
    last one lived under ``WATCHER_STEADY_SECONDS`` (a crash loop is logged, not hidden)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.processes: list[asyncio.subprocess.Process] = []
        self.started = asyncio.Event()

    @property
    def current(self) -> asyncio.subprocess.Process | None:
        return self.processes[-1] if self.processes else None

    async def start(self) -> asyncio.subprocess.Process:
        process = await _start("control_plane.group.watcher", self.settings)
        # Only the live one is kept to be stopped; earlier ones have exited.
        self.processes = [process]
        self.started.set()
        return process

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = WATCHER_BACKOFF_INITIAL
        process = self.current or await self.start()
        while True:
            began = loop.time()
            code = await process.wait()
            lived = loop.time() - began
            if lived >= WATCHER_STEADY_SECONDS:
                backoff = WATCHER_BACKOFF_INITIAL
            delay = 0.0 if lived >= WATCHER_STEADY_SECONDS else backoff
            log.warning("watcher_exited", pid=process.pid, code=code, restart_in=delay)
            if delay:
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, WATCHER_BACKOFF_MAX)
            process = await self.start()
            log.info("watcher_restarted", pid=process.pid)


async def _stop_all(processes: list[asyncio.subprocess.Process], *, grace: float) -> None:
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace + STOP_MARGIN):
            await asyncio.gather(*(p.wait() for p in processes))
    except TimeoutError:
        for process in processes:
            if process.returncode is None:
                log.warning("worker_killed", pid=process.pid, after_seconds=grace + STOP_MARGIN)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await asyncio.gather(*(p.wait() for p in processes))


async def supervise(
    config: ServeConfig, *, workers: int, log_level: str = "info", log_json: bool | None = None
) -> int:
    """Run ``workers`` workers until SIGTERM/SIGINT (exit code 0) or until one exits on its
    own (1)."""
    config.validate()
    check_free(config.xds_listen)
    warn_if_exposed(config)  # once for the group: its workers leave it to the supervisor
    base = config.control_plane_id or f"routeplane/{socket.gethostname()}/{os.getpid()}"
    # The workers publish their load in one fleet group: none counts a sibling's record.
    fleet_group = f"{base}#{secrets.token_hex(6)}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    processes: list[asyncio.subprocess.Process] = []
    async with contextlib.AsyncExitStack() as stack:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
        # One registry watch for the host: a watcher process feeds every worker (2 or more).
        keeper: WatcherKeeper | None = None
        socket_path: str | None = None
        if workers > 1:
            directory = Path(tempfile.mkdtemp(prefix="routeplane-watch-"))  # mode 0700
            stack.callback(_remove_tree, directory)
            socket_path = str(directory / "watch.sock")
            keeper = WatcherKeeper(
                {
                    "registry_url": config.registry_url,
                    "poll_interval": config.poll_interval,
                    "socket": socket_path,
                    "log_level": log_level,
                    "log_json": log_json,
                }
            )
            stack.push_async_callback(
                lambda: _stop_all(keeper.processes if keeper else [], grace=0)
            )
            await keeper.start()
        stack.push_async_callback(lambda: _stop_all(processes, grace=config.grace_seconds))
        addresses = [f"127.0.0.1:{loopback_port()}" for _ in range(workers)]
        for index, address in enumerate(addresses):
            worker = dataclasses.replace(
                config,
                admin_listen=address,
                control_plane_id=f"{base}/w{index}",
                fleet_group=fleet_group,
                keda_listen="",
            )
            siblings = [a for a in addresses if a != address]
            processes.append(
                await _spawn(
                    worker,
                    siblings=siblings,
                    watcher=socket_path,
                    log_level=log_level,
                    log_json=log_json,
                )
            )
        service = AggregateService(
            workers=addresses,
            pids=[p.pid for p in processes],
            token=config.admin_token,
            interval=config.load_report_interval,
        )
        stack.push_async_callback(service.close)
        # The group's rollout driver (its workers run none): judged from the group's sums.
        registry = await asyncio.to_thread(open_registry, config.registry_url)
        stack.push_async_callback(asyncio.to_thread, registry.close)
        rollouts = RolloutDriver(
            registry=registry,
            holder=f"{base}#{secrets.token_hex(6)}",
            rates=lambda server: rates_of_rows(service.load_view.rows_of(server)),
        )
        service.rollouts = lambda: rollouts.rollouts
        service.more_problems = lambda: (
            (ROLLOUT_PROBLEM, p.server, p.field, p.value, p.message) for p in rollouts.problems
        )

        async def exposition() -> bytes:
            more = []
            if socket_path is not None:
                more.append(("watcher", await watcher_metrics(socket_path)))
            return await service.metrics(more=more) + metrics.rollout_exposition()

        admin = AdminServer(
            service=service,
            ready=service.ready,
            token=config.admin_token,
            metrics=exposition,
            handlers=[csds.generic_handler(merged(None, service.client))],
        )
        await start_admin(admin, config.admin_listen)
        stack.push_async_callback(admin.stop)
        # KEDA's scaler follows the group's sums: the supervisor serves it, no worker does.
        await start_keda(stack, config, view=service.load_view, versions=service.versions)
        log.info(
            "workers_started",
            workers=workers,
            pids=[p.pid for p in processes],
            xds=config.xds_listen,
            admin=config.admin_listen,
            identifier=base,
            keda=config.keda_listen or None,
            watcher=keeper.current.pid if keeper and keeper.current else None,
        )
        load = asyncio.create_task(service.run())
        keeping = asyncio.create_task(keeper.run()) if keeper else None
        driving = asyncio.create_task(rollouts.run())
        exits = {asyncio.create_task(p.wait()): p for p in processes}
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
        for task in (load, driving, stopping, *exits, *([keeping] if keeping else [])):
            task.cancel()
        if keeping is not None:  # no watcher restarted while the group stops
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
        code = 0
        for task, process in exits.items():
            # Ctrl-C reaches the workers too: one may end before the supervisor noticed.
            if task in done and not stop.is_set():
                log.error("worker_exited", pid=process.pid, code=process.returncode)
                code = 1
        log.info("shutdown_started", grace_seconds=config.grace_seconds)
    log.info("shutdown_completed")
    return code


def _remove_tree(directory: Path) -> None:
    for entry in directory.iterdir():
        with contextlib.suppress(OSError):
            entry.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


async def watcher_metrics(path: str) -> str:
    """The watcher's exposition ("" when it does not answer: it may be restarting)."""
    try:
        async with asyncio.timeout(WATCHER_METRICS_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(b"metrics\n")
                data = b""
                while chunk := await reader.read(1 << 16):
                    data += chunk
                    if len(data) > MAX_WATCHER_METRICS_BYTES:
                        return ""
            finally:
                writer.close()
    except (TimeoutError, OSError):
        return ""
    return data.decode(errors="replace")
