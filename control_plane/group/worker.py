"""A worker of ``serve --workers``: ``python -m control_plane.group.worker``, started by the
supervisor (``group/supervisor.py``) with its settings as JSON on stdin.

It runs ``app.serve`` sharing the xDS port with its siblings (``SO_REUSEPORT``), following its
host's registry watcher (``group/watcher.py``, on the Unix socket its settings name) rather
than the registry itself, and hands it the group's CSDS answer (``group/csds.py``): a CSDS
call on the xDS port reaches one worker, which answers for the whole group, asking its
siblings on their loopback admin ports. A worker whose supervisor disappeared (SIGKILL) stops
itself within ``ORPHAN_EXIT_SECONDS``: on Linux the kernel tells it at once
(``PR_SET_PDEATHSIG``), elsewhere it asks every ``ORPHAN_CHECK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys

import structlog

from control_plane import logs
from control_plane.app import ServeConfig, serve, tune_gc
from control_plane.group.client import Workers
from control_plane.group.csds import merged
from control_plane.group.follow import WatcherFeed
from control_plane.group.orphan import ORPHAN_CHECK_SECONDS, ask_for_parent_death_signal

log = structlog.get_logger("routeplane.workers")

# An orphaned worker drains like on SIGTERM, but exits this long after it knew, drained or not:
# its group is gone, and the next supervisor needs the xDS port.
ORPHAN_EXIT_SECONDS = 0.8
MAX_SETTINGS_BYTES = 1 << 20


async def _worker(
    config: ServeConfig, *, siblings: list[str], parent: int, registry_watcher: str | None
) -> None:
    loop = asyncio.get_running_loop()
    gone = False

    def orphaned() -> None:
        nonlocal gone
        if gone:
            return
        gone = True
        log.warning("supervisor_gone", parent=parent, exit_within=ORPHAN_EXIT_SECONDS)
        loop.call_later(ORPHAN_EXIT_SECONDS, _exit_now)
        os.kill(os.getpid(), signal.SIGTERM)  # serve's own shutdown, for as long as it has

    async def watch_parent() -> None:
        # Without PR_SET_PDEATHSIG no event tells a child its parent died: ask now and then.
        while os.getppid() == parent:  # noqa: ASYNC110
            await asyncio.sleep(ORPHAN_CHECK_SECONDS)
        orphaned()

    loop.add_signal_handler(signal.SIGUSR1, orphaned)
    watcher = asyncio.create_task(watch_parent())
    others = Workers(siblings, token=config.admin_token)
    try:
        if os.getppid() != parent:  # it died before the kernel was asked to tell
            orphaned()
        await serve(
            config,
            reuse_port=True,
            csds_answer=lambda xds: merged(xds, others),
            notices=False,
            drive_rollouts=False,  # the supervisor drives them, from the group's load
            # The host's one registry watch (group/watcher.py), when the group runs one.
            states=WatcherFeed(registry_watcher).states if registry_watcher else None,
        )
    finally:
        watcher.cancel()
        loop.remove_signal_handler(signal.SIGUSR1)
        await others.close()


def _exit_now() -> None:
    log.warning("worker_stopped_orphaned", after_seconds=ORPHAN_EXIT_SECONDS)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


def main() -> None:
    """A worker: the settings as JSON on stdin (its config, its siblings' admin addresses, the
    supervisor's pid), then ``app.serve`` until SIGTERM."""
    settings = json.loads(sys.stdin.buffer.read(MAX_SETTINGS_BYTES))
    logs.configure(level=settings["log_level"], json=settings["log_json"])
    config = ServeConfig(**settings["config"])
    tune_gc()
    ask_for_parent_death_signal()
    siblings = [str(address) for address in settings["siblings"]]
    watcher = settings.get("watcher")
    asyncio.run(
        _worker(
            config,
            siblings=siblings,
            parent=settings["parent"],
            registry_watcher=str(watcher) if watcher else None,
        )
    )


if __name__ == "__main__":
    main()
