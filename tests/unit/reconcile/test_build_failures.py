"""The driver: a group whose view cannot be built is reported once, without a traceback, and
never stops the others (issue 12: ``routeplane.listen: 127.0.0.1:notaport``). Such a group is
made in-process here: a stream's node with that address is refused at its start
(``test_hostile_streams.py``)."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from control_plane.reconcile import Reconciler
from control_plane.registry import open_registry
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup

GOOD = NodeGroup(cluster="edge", region="us-west")
BAD = NodeGroup(cluster="edge", region="us-west", listen="127.0.0.1:notaport")


def test_a_bad_listen_address_is_logged_once_and_the_rest_is_published(tmp_path: Path) -> None:
    registry = open_registry(f"sqlite://{tmp_path / 'r.db'}")
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    cache = SnapshotCache()
    reconciler = Reconciler(registry=registry, cache=cache)
    cache.watch(GOOD, lambda: None)
    cache.watch(BAD, lambda: None)
    with capture_logs() as logs:
        for _ in range(3):
            reconciler.apply(registry.read_state())
        registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
        reconciler.apply(registry.read_state())
    failed = [e for e in logs if e["event"] == "snapshot_build_failed"]
    assert len(failed) == 1
    assert failed[0]["group"] == BAD.key
    assert "port 'notaport' is not a number" in failed[0]["error"]
    assert "exc_info" not in failed[0]
    assert cache.get(BAD) is None
    snapshot = cache.get(GOOD)
    assert snapshot is not None
    assert snapshot.revision == registry.read_state().revision
    registry.close()
