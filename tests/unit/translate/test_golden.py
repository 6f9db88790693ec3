"""Golden files of the generated resources: names and shapes are an API (stats, dashboards).

Regenerate after an intended change with ``UPDATE_GOLDEN=1 make test`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format

from control_plane.registry.spec import parse_spec
from control_plane.translate import ProxyView, to_resources
from harness.models import endpoint, server, table

GOLDEN = Path(__file__).parent / "golden"


def _table():  # type: ignore[no-untyped-def]
    from dataclasses import replace

    chat = replace(
        server(
            "chat",
            endpoint("r1", 8081, zone="a"),
            endpoint("r2", 8082, zone="b"),
            endpoint("r3", 8083, region="us-east", draining=True),
            hostnames=("chat.example.com",),
            workspace="acme",
        ),
        spec=parse_spec(
            {
                "load_balancing": {"consistent_hash": {"header": "x-session-id"}},
                "max_requests_per_replica": 8,
                "path_prefix": "/v1",
                "health_check": {"http": "/healthz"},
            }
        ),
    )
    tokens = replace(
        server(
            "tokens",
            endpoint("r4", 9000, weight=300),
            protocol="grpc",
            hostnames=("tokens.example.com",),
        ),
        spec=parse_spec({"failover": "local_only", "outlier_detection": "off"}, protocol="grpc"),
    )
    return table(chat, tokens)


@pytest.mark.parametrize(("zone", "kind"), [("", "envoy"), ("a", "envoy"), ("", "grpc")])
def test_resources_match_the_golden_files(zone: str, kind: str) -> None:
    view = ProxyView(
        region="us-west", zone=zone, listen_host="127.0.0.1", listen_port=10000, kind=kind
    )
    rendered = {
        f"{r.type_url.rsplit('.', 1)[-1]}/{r.name}": json_format.MessageToDict(r.message)
        for r in to_resources(_table(), view)
    }
    suffix = ("-" + zone if zone else "") + ("-grpc" if kind == "grpc" else "")
    path = GOLDEN / f"resources-us-west{suffix}.json"
    text = json.dumps(rendered, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text()
