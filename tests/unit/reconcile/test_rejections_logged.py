"""``registry_row_rejected`` is logged once per row and problem while it lasts, again only when
it changes or comes back: a new revision with one more bad row logged every bad row again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from control_plane.reconcile import Reconciler
from control_plane.registry import open_registry, rows
from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup

ECHO = Server(name="echo", hostnames=("echo.local",), protocol="http")
GOOD = rows.replica("r-good", "echo", "127.0.0.1", 8081, "us-west", "", 100, "READY", None, 0)


def bad(rid: str, port: Any) -> Replica:
    return rows.replica(rid, "echo", "127.0.0.1", port, "us-west", "", 100, "READY", None, 0)


def test_a_rejection_is_logged_once_while_it_lasts(tmp_path: Path) -> None:
    registry = open_registry(f"sqlite://{tmp_path / 'r.db'}")
    cache = SnapshotCache()
    cache.watch(NodeGroup(cluster="edge", region="us-west"), lambda: None)
    reconciler = Reconciler(registry=registry, cache=cache)
    revisions = [
        [GOOD, bad("r-a", "abc")],  # a: logged
        [GOOD, bad("r-a", "abc")],  # the same: nothing
        [GOOD, bad("r-a", "abc"), bad("r-b", 70000)],  # b is new: b only
        [GOOD, bad("r-a", "abc"), bad("r-b", 70000), bad("r-c", "x")],  # c only
        [GOOD, bad("r-a", "abc")],  # b and c gone: nothing
        [GOOD, bad("r-a", "xyz")],  # a changed: a again
        [GOOD],  # all gone: nothing
        [GOOD, bad("r-a", "xyz")],  # a came back: a again
    ]
    logged: list[list[tuple[str, str]]] = []
    for revision, replicas in enumerate(revisions, start=1):
        state = RegistryState.of(
            servers=[ECHO], replicas=replicas, revision=revision, committed_at=0.0
        )
        with capture_logs() as logs:
            reconciler.apply(state)
            if revision == 4:
                reconciler.pipeline.reset()  # a failed pass: the next starts from scratch
                reconciler.apply(state)
        logged.append(
            [(e["name"], e["value"]) for e in logs if e["event"] == "registry_row_rejected"]
        )
    assert logged == [
        [("r-a", "abc")],
        [],
        [("r-b", "70000")],
        [("r-c", "x")],
        [],
        [("r-a", "xyz")],
        [],
        [("r-a", "xyz")],
    ]
    registry.close()
