"""The load intake's catalog of a server with a traffic split (issue 26): every revision's
cluster is the server's, with that revision's replicas; a drop is a cold start only while the
server has no ready replica at all."""

from __future__ import annotations

import json

from control_plane.load.reading import catalog_of
from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.routing import to_routing_table


def test_every_revision_cluster_reports_for_its_server() -> None:
    spec = {"traffic": [{"revision": "v1", "percent": 90}, {"revision": "v2", "percent": 10}]}
    servers = [
        Server(name="chat", hostnames=("chat.local",), protocol="http", spec=json.dumps(spec)),
        Server(name="echo", hostnames=("echo.local",), protocol="http"),
    ]
    replicas = [
        Replica(
            id="a", server="chat", host="127.0.0.1", port=8081, region="us-west", revision="v1"
        ),
        Replica(
            id="b",
            server="chat",
            host="127.0.0.1",
            port=8082,
            region="us-west",
            revision="v2",
            state="DRAINING",
        ),
        Replica(id="c", server="echo", host="127.0.0.1", port=8083, region="us-west"),
    ]
    table = to_routing_table(
        RegistryState.of(servers=servers, replicas=replicas, revision=1, committed_at=0.0)
    )
    catalog = catalog_of(table)
    assert dict(catalog.servers) == {
        "default_chat_rev_v1": "chat",
        "default_chat_rev_v2": "chat",
        "default_echo": "echo",
    }
    assert dict(catalog.endpoints["default_chat_rev_v1"]) == {("127.0.0.1", 8081): ("a", "us-west")}
    assert dict(catalog.endpoints["default_chat_rev_v2"]) == {("127.0.0.1", 8082): ("b", "us-west")}
    # v2 has no ready replica, but chat has one: a drop on v2's cluster is no cold start.
    assert catalog.idle == frozenset()
