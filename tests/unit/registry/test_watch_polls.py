"""The registry watch counts its looks at the store (routeplane_registry_watch_polls_total), so
the benchmarks report the polls a store really gets, not workers / interval."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from control_plane import metrics
from control_plane.registry import open_registry
from control_plane.registry.sqlite import wake, watch
from tests.helpers import async_wait_until


async def test_the_sqlite_watch_counts_every_look_at_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = open_registry(f"sqlite://{tmp_path / 'rp.db'}")
    probes = [0]
    probe = watch._data_version

    def counted_probe(connection: object) -> int | None:
        probes[0] += 1
        return probe(connection)  # type: ignore[arg-type]

    monkeypatch.setattr(watch, "_data_version", counted_probe)
    monkeypatch.setattr(wake, "open_directory_watch", lambda path: None)
    states = watcher.watch(poll_interval=0.001)
    await asyncio.wait_for(anext(states), timeout=5)
    probes[0] = 0
    before = metrics.WATCH_POLLS._value.get()
    following = asyncio.ensure_future(anext(states))
    await async_wait_until(lambda: probes[0] >= 30, what="30 looks of the watch")
    following.cancel()
    counted = metrics.WATCH_POLLS._value.get() - before
    assert counted == probes[0]
    await asyncio.gather(following, return_exceptions=True)
    await states.aclose()
    watcher.close()
