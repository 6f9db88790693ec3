"""Revisions against every registry (issue 26, item 1): a server's revisions read from its
replicas, a traffic split that names a revision no replica carries refused by ``servers
apply`` naming the field, and another writer's replica row with a bad revision a problem."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from control_plane.registry import Registry
from control_plane.registry.errors import ServersFileError
from control_plane.registry.revisions import of_replicas
from control_plane.registry.servers import ServerDocument, apply_servers
from control_plane.routing.build import to_routing_table
from harness.waiting import wait_until


def document(traffic: list[dict[str, Any]] | None = None, *, name: str = "echo") -> ServerDocument:
    return ServerDocument(
        source=f"servers.yaml: server {name!r}",
        name=name,
        hostnames=[f"{name}.local"],
        protocol="http",
        workspace="default",
        spec={} if traffic is None else {"traffic": traffic},
    )


SPLIT = [{"revision": "v1", "percent": 90}, {"revision": "v2", "percent": 10, "tag": "canary"}]


def test_a_split_naming_a_revision_no_replica_carries_is_refused(registry: Registry) -> None:
    apply_servers(registry, [document()])
    registry.register_replica(
        server="echo", address="127.0.0.1:8081", region="us-west", revision="v1"
    )
    registry.register_replica(server="echo", address="127.0.0.1:8082", region="us-west")
    [before] = registry.list_servers()
    with pytest.raises(ServersFileError) as refused:
        apply_servers(registry, [document(SPLIT)])
    assert str(refused.value) == (
        "servers.yaml: server 'echo': invalid spec.traffic[1].revision 'v2': no replica of"
        " server 'echo' carries it (revisions: v1); register one first, or name latest;"
        " nothing was written"
    )
    assert registry.list_servers() == [before]
    # A replica that is not READY yet carries its revision: the split may name it.
    registry.register_replica(
        server="echo", address="127.0.0.1:8083", region="us-west", revision="v2", state="STARTING"
    )
    assert apply_servers(registry, [document(SPLIT)]) == [("echo", "updated")]
    assert apply_servers(registry, [document(SPLIT)]) == [("echo", "unchanged")]


def test_a_batch_is_refused_whole_when_one_split_names_an_absent_revision(
    registry: Registry,
) -> None:
    apply_servers(registry, [document(), document(name="chat")])
    registry.register_replica(
        server="echo", address="127.0.0.1:8081", region="us-west", revision="v1"
    )
    registry.register_replica(
        server="echo", address="127.0.0.1:8082", region="us-west", revision="v2"
    )
    before = registry.list_servers()
    with pytest.raises(ServersFileError, match=r"server 'chat': invalid spec.traffic\[0\]"):
        apply_servers(registry, [document(SPLIT), document(SPLIT, name="chat")])
    assert registry.list_servers() == before


def test_a_new_server_may_name_revisions_and_latest_needs_none(registry: Registry) -> None:
    assert apply_servers(registry, [document(SPLIT)]) == [("echo", "created")]
    latest = [{"revision": "latest", "percent": 100, "tag": "next"}]
    assert apply_servers(registry, [document(latest)]) == [("echo", "updated")]


def test_a_replica_whose_lease_ran_out_carries_nothing(registry: Registry) -> None:
    apply_servers(registry, [document()])
    registry.register_replica(
        server="echo", address="127.0.0.1:8081", region="us-west", revision="v1"
    )
    leased = registry.register_replica(
        server="echo", address="127.0.0.1:8082", region="us-west", revision="v2", lease_seconds=1
    )
    assert leased.lease_expires_at is not None
    assert apply_servers(registry, [document(SPLIT)]) == [("echo", "updated")]
    apply_servers(registry, [document()])
    wait_until(lambda: time.time() > leased.lease_expires_at + 0.01, what="the lease to end")  # type: ignore[operator]
    with pytest.raises(ServersFileError, match=r"spec.traffic\[1\].revision 'v2'"):
        apply_servers(registry, [document(SPLIT)])


def test_revisions_newest_first_from_either_store(registry: Registry) -> None:
    apply_servers(registry, [document()])
    for port, revision, state in [(8081, "", "READY"), (8082, "v1", "READY")]:
        registry.register_replica(
            server="echo",
            address=f"127.0.0.1:{port}",
            region="us-west",
            revision=revision,
            state=state,
        )
    first = max(r.registered_at for r in registry.list_replicas())
    wait_until(lambda: time.time() > first, what="the clock to pass the first two")
    new = registry.register_replica(
        server="echo", address="127.0.0.1:8083", region="us-west", revision="v2", state="STARTING"
    )
    registry.register_replica(
        server="echo", address="127.0.0.1:8084", region="us-west", revision="v1"
    )
    revisions = of_replicas(registry.list_replicas("echo"), now=time.time())
    assert [(r.name, r.ready, r.replicas, r.latest) for r in revisions.revisions] == [
        ("v2", 0, 1, False),
        ("v1", 2, 2, True),
        ("", 1, 1, False),
    ]
    assert revisions.revisions[0].registered_at == pytest.approx(new.registered_at, abs=1e-3)
    registry.set_replica_state(new.id, "READY")
    assert of_replicas(registry.list_replicas("echo"), now=time.time()).latest.name == "v2"  # type: ignore[union-attr]


@pytest.mark.parametrize("revision", ["latest", "V2", "v2\n", "v 2"])
def test_a_foreign_rows_bad_revision_is_a_problem_in_either_store(
    registry: Registry, revision: str
) -> None:
    """Another writer's row, past the write-time check: Spanner's column holds any string of
    up to 63 characters, SQLite's anything (see test_hostile_rows.py for other types)."""
    apply_servers(registry, [document()])
    good = registry.register_replica(
        server="echo", address="127.0.0.1:8081", region="us-west", revision="v1"
    )
    values = ("r-bad", "echo", "127.0.0.1", 8082, "us-west", "", 100, "READY")
    url = getattr(registry, "url", "")
    if url.startswith("sqlite://"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as db:
            db.execute(
                "INSERT INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (*values, time.time(), revision, time.time()),
            )
    else:
        from google.cloud import spanner

        columns = ("Id", "ServerName", "Host", "Port", "Region", "Zone", "Weight", "State")
        registry._conn.transact(  # type: ignore[attr-defined]
            "foreign insert",
            lambda tx: tx.insert(
                "Replicas",
                columns=(*columns, "UpdatedAt", "Revision"),
                values=[(*values, spanner.COMMIT_TIMESTAMP, revision)],
            ),
        )
    state = registry.read_state()
    assert {r.id: r.revision for r in state.replicas} == {good.id: "v1", "r-bad": revision}
    table = to_routing_table(state)
    [problem] = table.problems
    assert (problem.name, problem.field, problem.value) == ("r-bad", "revision", revision)
    assert [e.replica_id for e in table.servers[0].endpoints] == [good.id]
    # servers apply still works beside it, and never echoes the bad value.
    with pytest.raises(ServersFileError) as refused:
        apply_servers(registry, [document(SPLIT)])
    assert "(revisions: v1)" in str(refused.value)
