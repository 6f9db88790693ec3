"""The clusters' ``load_balancing_policy`` lists, pinned: what Envoy and gRPC's xDS client each
take (the first entry they support) for least_request, round_robin, consistent_hash and
utilization; and the same policy on every cluster of a server (a traffic split's revisions,
the proxyless view)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from google.protobuf import json_format

from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.registry.spec import parse_spec
from control_plane.routing import to_routing_table
from control_plane.translate import ProxyView, to_resources
from control_plane.translate.clusters import to_cluster
from control_plane.xds.resources import CLUSTER
from harness.models import endpoint, server

WRR = "type.googleapis.com/envoy.extensions.load_balancing_policies"
CSWRR = f"{WRR}.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin"


def policies(load_balancing: Any) -> list[dict[str, Any]]:
    spec = parse_spec({"load_balancing": load_balancing})
    cluster = to_cluster(replace(server("chat", endpoint("r1", 9000)), spec=spec))
    found = json_format.MessageToDict(cluster.load_balancing_policy)["policies"]
    return [p["typedExtensionConfig"] for p in found]


def test_least_request_for_envoy_then_round_robin_in_weighted_localities_for_grpc() -> None:
    assert policies("least_request") == [
        {
            "name": "envoy.load_balancing_policies.least_request",
            "typedConfig": {"@type": f"{WRR}.least_request.v3.LeastRequest"},
        },
        {
            "name": "envoy.load_balancing_policies.wrr_locality",
            "typedConfig": {
                "@type": f"{WRR}.wrr_locality.v3.WrrLocality",
                "endpointPickingPolicy": {
                    "policies": [
                        {
                            "typedExtensionConfig": {
                                "name": "envoy.load_balancing_policies.round_robin",
                                "typedConfig": {"@type": f"{WRR}.round_robin.v3.RoundRobin"},
                            }
                        }
                    ]
                },
            },
        },
    ]


def test_round_robin_is_one_entry_both_take() -> None:
    assert policies("round_robin") == [
        {
            "name": "envoy.load_balancing_policies.round_robin",
            "typedConfig": {"@type": f"{WRR}.round_robin.v3.RoundRobin"},
        }
    ]


def test_utilization_is_one_client_side_weighted_round_robin_entry_with_every_knob() -> None:
    assert policies(
        {
            "utilization": {
                "metric": "named_metrics.kv_cache",
                "blackout_period": "2s",
                "weight_expiration_period": "30s",
                "weight_update_period": "250ms",
                "error_utilization_penalty": 0.5,
                "out_of_band": {"period": "1s"},
            }
        }
    ) == [
        {
            "name": "envoy.load_balancing_policies.client_side_weighted_round_robin",
            "typedConfig": {
                "@type": CSWRR,
                "enableOobLoadReport": True,
                "oobReportingPeriod": "1s",
                "blackoutPeriod": "2s",
                "weightExpirationPeriod": "30s",
                "weightUpdatePeriod": "0.250s",
                "errorUtilizationPenalty": 0.5,
                "metricNamesForComputingUtilization": ["named_metrics.kv_cache"],
            },
        }
    ]


def test_utilization_without_knobs_writes_the_defaults_and_no_metric_or_out_of_band() -> None:
    assert policies({"utilization": {}}) == [
        {
            "name": "envoy.load_balancing_policies.client_side_weighted_round_robin",
            "typedConfig": {
                "@type": CSWRR,
                "blackoutPeriod": "10s",
                "weightExpirationPeriod": "180s",
                "weightUpdatePeriod": "1s",
                "errorUtilizationPenalty": 1.0,
            },
        }
    ]


def test_a_zero_penalty_and_blackout_are_written_not_left_to_the_defaults() -> None:
    [entry] = policies({"utilization": {"error_utilization_penalty": 0, "blackout_period": 0}})
    assert entry["typedConfig"]["blackoutPeriod"] == "0s"
    assert entry["typedConfig"]["errorUtilizationPenalty"] == 0.0


def test_consistent_hash_is_maglev_for_envoy_then_ring_hash_for_grpc() -> None:
    names = [p["name"] for p in policies({"consistent_hash": {"header": "x-session"}})]
    assert names == [
        "envoy.load_balancing_policies.maglev",
        "envoy.load_balancing_policies.ring_hash",
    ]


def _cluster_policies(kind: str, spec: dict[str, Any]) -> dict[str, list[str]]:
    chat = Server(
        name="chat", hostnames=("chat.example.com",), protocol="grpc", spec=json.dumps(spec)
    )
    replicas = [
        Replica(
            id=f"chat-{rev}",
            server="chat",
            host="127.0.0.1",
            port=port,
            region="us-west",
            revision=rev,
            registered_at=float(port),
        )
        for rev, port in (("v1", 8081), ("v2", 8082))
    ]
    table = to_routing_table(
        RegistryState.of(servers=[chat], replicas=replicas, revision=1, committed_at=0.0)
    )
    view = ProxyView(
        region="us-west",
        listen_host="" if kind == "grpc" else "127.0.0.1",
        listen_port=0 if kind == "grpc" else 10000,
        kind=kind,
    )
    return {
        r.name: [p.typed_extension_config.name for p in r.message.load_balancing_policy.policies]
        for r in to_resources(table, view)
        if r.type_url == CLUSTER
    }


@pytest.mark.parametrize("kind", ["envoy", "grpc"])
def test_every_revision_of_a_split_gets_the_servers_policy(kind: str) -> None:
    spec = {
        "load_balancing": {"utilization": {"blackout_period": "1s"}},
        "traffic": [{"revision": "v1", "percent": 90}, {"revision": "v2", "percent": 10}],
    }
    found = _cluster_policies(kind, spec)
    assert len(found) == 2
    assert set(map(tuple, found.values())) == {
        ("envoy.load_balancing_policies.client_side_weighted_round_robin",)
    }
