"""The lease cleanup loop, and the backoff every follower of the registry uses.

Run by a lone ``serve`` (``reconcile.Reconciler.run_cleanup``) and by the registry watcher of a
``serve --workers`` group (``group/watcher.py``), once per host. Imports the registry's model
and errors only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from control_plane.registry.errors import RegistryError
from control_plane.registry.model import Registry

log = structlog.get_logger("routeplane.reconcile")

BACKOFF_INITIAL = 0.1  # seconds before following the registry again after it failed
BACKOFF_MAX = 5.0
CLEANUP_INTERVAL = 1.0


async def run_cleanup(
    registry: Registry,
    *,
    clock: Callable[[], float] = time.time,
    interval: float = CLEANUP_INTERVAL,
) -> None:
    """Remove replicas whose lease expired, every ``interval``, until cancelled.

    Every control-plane replica may run this; the deletes are idempotent transactions.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await asyncio.to_thread(registry.remove_expired, now=clock())
        except RegistryError as exc:
            log.warning("lease_cleanup_failed", error=str(exc))
            continue
        if removed:
            log.info("replicas_expired", replicas=removed)
