"""``routeplane load`` by revision (issue 26): the ``--json`` keys of a replica and of a
revision, and a REVISION breakdown under each server whose replicas carry revisions."""

from __future__ import annotations

import pytest

from control_plane.admin.client import admin_pb2
from control_plane.cli import output
from control_plane.cli.insight import _print_load


def response() -> admin_pb2.LoadResponse:
    answer = admin_pb2.LoadResponse(reporting_proxies=1)
    echo = answer.servers.add(server="echo", region="*", ready_replicas=3, desired_replicas=-1)
    echo.replicas.add(
        replica="b1", in_flight=1, requests_per_second=4, errors_per_second=2, revision="v2"
    )
    echo.revisions.add(revision="", ready_replicas=1)
    echo.revisions.add(revision="v1", ready_replicas=1, in_flight=3, requests_per_second=9)
    echo.revisions.add(
        revision="v2", ready_replicas=1, in_flight=1, requests_per_second=4, errors_per_second=2
    )
    answer.servers.add(server="plain", region="*", ready_replicas=1, desired_replicas=-1)
    return answer


def test_load_json_has_replica_errors_revisions_and_rows_by_revision() -> None:
    [echo, plain] = [output.load_json(row) for row in response().servers]
    assert list(echo["replicas"][0]) == [
        "replica",
        "in_flight",
        "requests_per_second",
        "errors_per_second",
        "revision",
    ]
    assert echo["replicas"][0]["errors_per_second"] == 2
    assert echo["replicas"][0]["revision"] == "v2"
    assert echo["revisions"][2] == {
        "revision": "v2",
        "ready_replicas": 1,
        "in_flight": 1,
        "requests_per_second": 4,
        "errors_per_second": 2,
    }
    assert plain["revisions"] == []
    assert list(echo)[-1] == "revisions"  # a new key, after every key that was there


def test_the_table_has_a_revision_breakdown_for_servers_with_revisions_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_load(response(), as_json=False, compact=False)
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("SERVER  REVISION"))
    breakdown = [line.split() for line in lines[header + 1 :]]
    assert breakdown == [
        ["echo", "(none)", "1", "0", "0.0", "0.0"],
        ["echo", "v1", "1", "3", "9.0", "0.0"],
        ["echo", "v2", "1", "1", "4.0", "2.0"],
    ]
    assert not any(line.startswith("plain") for line in lines[header:])
