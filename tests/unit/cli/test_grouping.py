"""Issue 28: ``routeplane proxies`` shows a proxy's on-demand CDS stream as part of that proxy
(one row and one ``--json`` object per node id), and ``routeplane load`` prints each server's
rows together (servers in name order, the ``*`` row first)."""

from __future__ import annotations

import json

import pytest

from control_plane.admin.client import admin_pb2
from control_plane.cli import output
from control_plane.cli.insight import _print_load, proxies


def two_envoys_one_with_a_cold_start() -> admin_pb2.ListProxiesResponse:
    """What ListProxies answers after edge-us-west-1 sent a request to a cold-start server:
    its ADS stream, and the delta CDS stream Envoy opened for the on-demand cluster."""
    answer = admin_pb2.ListProxiesResponse()
    for node in ("edge-us-west-1", "edge-us-east-1"):
        ads = answer.proxies.add(
            node_id=node, group=f"edge/{node}", protocol="delta", service="ads", connected_since=1
        )
        for kind in ("cds", "eds", "lds", "rds"):
            ads.types.add(type=kind, state="SYNCED")
    on_demand = answer.proxies.add(
        node_id="edge-us-west-1", group="edge/edge-us-west-1", protocol="delta", service="cds"
    )
    on_demand.connected_since = 5
    on_demand.types.add(type="cds", state="MISSING", missing=1, missing_names=["default_gpu"])
    return answer


def test_a_nodes_streams_are_grouped_its_ads_stream_first() -> None:
    grouped = output.by_node(two_envoys_one_with_a_cold_start().proxies)
    assert [
        (main.node_id, main.service, [o.service for o in others]) for main, others in grouped
    ] == [
        ("edge-us-west-1", "ads", ["cds"]),
        ("edge-us-east-1", "ads", []),
    ]
    main, [other] = grouped[0]
    assert output.is_on_demand(other, main)
    assert not output.is_on_demand(main, main)


def test_json_is_one_object_per_node_with_its_streams(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "control_plane.cli.insight.admin_call", lambda *_: two_envoys_one_with_a_cold_start()
    )
    with pytest.raises(SystemExit) as ended:
        proxies.main(["--admin", "127.0.0.1:1", "--json"], standalone_mode=True)
    assert ended.value.code == 0
    west, east = json.loads(capsys.readouterr().out)
    assert [west["node_id"], east["node_id"]] == ["edge-us-west-1", "edge-us-east-1"]
    assert west["service"] == "ads"  # the keys before issue 28: the node's main stream
    assert west["types"]["cds"]["state"] == "SYNCED"
    assert [(s["service"], s["on_demand"]) for s in west["streams"]] == [
        ("ads", False),
        ("cds", True),
    ]
    assert west["streams"][1]["types"]["cds"]["missing"] == ["default_gpu"]
    assert [s["service"] for s in east["streams"]] == ["ads"]


def test_the_table_has_one_row_per_node_and_names_the_on_demand_stream(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "control_plane.cli.insight.admin_call", lambda *_: two_envoys_one_with_a_cold_start()
    )
    with pytest.raises(SystemExit):
        proxies.main(["--admin", "127.0.0.1:1"], standalone_mode=True)
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines[1:] if line.startswith("edge-")]
    assert [row.split()[0] for row in rows] == ["edge-us-west-1", "edge-us-east-1"]
    [also] = [line for line in lines if line.startswith("also ")]
    assert also.startswith("also edge-us-west-1: on-demand cds stream (delta, ")
    assert also.endswith("): cds MISSING")
    assert "does not exist edge-us-west-1 cds: default_gpu" in lines


def test_load_rows_are_grouped_by_server(capsys: pytest.CaptureFixture[str]) -> None:
    answer = admin_pb2.LoadResponse(reporting_proxies=1)
    for server, region in [
        ("gpu", "*"),
        ("ws", "*"),
        ("echo", "us-west"),
        ("echo", "*"),
        ("gpu", "us-west"),
        ("echo", "us-east"),
    ]:
        answer.servers.add(server=server, region=region, desired_replicas=-1)
    expected = [
        ("echo", "*"),
        ("echo", "us-east"),
        ("echo", "us-west"),
        ("gpu", "*"),
        ("gpu", "us-west"),
        ("ws", "*"),
    ]
    _print_load(answer, as_json=True, compact=False)
    assert [(r["server"], r["region"]) for r in json.loads(capsys.readouterr().out)] == expected
    _print_load(answer, as_json=False, compact=False)
    table = capsys.readouterr().out.splitlines()[1:]
    assert [tuple(line.split()[:2]) for line in table] == expected
