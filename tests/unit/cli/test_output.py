"""The stable `--json` shapes (README, "Insight"): one function per value type, keys in order."""

from __future__ import annotations

import pytest

from control_plane.admin.client import admin_pb2
from control_plane.cli import output
from control_plane.registry import Replica, Server
from control_plane.registry.revisions import of_replicas


def keys(value: dict[str, object]) -> list[str]:
    return list(value)


def test_registry_rows() -> None:
    server = Server(name="echo", hostnames=("echo.local",), protocol="http", spec='{"x":1}')
    assert output.server_json(server) == {
        "name": "echo",
        "workspace": "default",
        "hostnames": ["echo.local"],
        "protocol": "http",
    }
    replica = Replica(id="r-1", server="echo", host="::1", port=80, region="us-west")
    assert keys(output.replica_json(replica)) == [
        "id",
        "server",
        "address",
        "region",
        "zone",
        "weight",
        "state",
        "revision",  # issue 26: appended, the keys before them unchanged
        "registered_at",
    ]
    assert output.replica_json(replica)["address"] == "[::1]:80"
    assert output.replica_json(replica)["registered_at"] is None  # 0: written before issue 26
    revisions = of_replicas(
        [Replica(id="r-2", server="echo", host="::1", port=80, region="r", revision="v2")], now=0
    )
    assert output.revisions_json(revisions) == [
        {
            "revision": "v2",
            "ready_replicas": 1,
            "replicas": 1,
            "registered_at": None,
            "latest": True,
        }
    ]


def test_admin_messages() -> None:
    proxy = admin_pb2.Proxy(node_id="n", types=[admin_pb2.TypeStatus(type="cds", pushes=2)])
    assert keys(output.proxy_json(proxy)) == [
        "node_id",
        "group",
        "address",
        "connected_since",
        "protocol",
        "service",
        "types",
        "client",
    ]
    assert keys(output.proxy_json(proxy)["types"]["cds"]) == [
        "sent_version",
        "acked_version",
        "state",
        "last_error",
        "pushes",
        "resources_sent",
        "acks",
        "nacks",
        "missing",
    ]
    assert keys(output.problem_json(admin_pb2.Problem())) == [
        "kind",
        "name",
        "field",
        "value",
        "message",
    ]
    snapshot = admin_pb2.Snapshot(resources=[admin_pb2.Resource(type="cds", json="{}")])
    assert keys(output.snapshot_json(snapshot)) == [
        "node_group",
        "version",
        "type_versions",
        "revision",
        "published_at",
        "cause",
        "resources",
    ]
    assert keys(output.snapshot_json(snapshot)["resources"][0]) == [
        "type",
        "name",
        "version",
        "bytes",
        "summary",
    ]
    diff = admin_pb2.SnapshotDiff(changes=[admin_pb2.ResourceChange(change="added")])
    assert keys(output.diff_json(diff)) == ["from", "to", "changes"]
    assert keys(output.diff_json(diff)["changes"][0]) == [
        "change",
        "type",
        "name",
        "from_version",
        "to_version",
    ]
    assert keys(output.history_json(admin_pb2.HistoryEntry())) == [
        "node_group",
        "version",
        "published_at",
        "revision",
        "changed_resources",
        "cause",
    ]


def test_tables_escape_control_characters_and_cut_long_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from control_plane.cli.output import table

    forged = "proxy-1\nproxy-2  edge/us-west@127.0.0.1:10000  forged"
    osc = "\x1b]0;owned\x07proxy"
    long_name = "s" * 10_000
    table(["NODE", "NAME"], [[forged, "a"], [osc, long_name], ["plain", "b"]])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # the header and one line per row: no row forged
    assert "\\n" in lines[1]
    assert "\x1b" not in "".join(lines)
    assert "\\x1b" in lines[2]
    assert max(len(line) for line in lines) < 200  # one long value pads nothing
    assert lines[2].rstrip().endswith("…")
