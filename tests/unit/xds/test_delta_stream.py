"""Delta (incremental) protocol rules, driven request by request."""

from __future__ import annotations

from control_plane.xds.delta import DeltaStream
from control_plane.xds.resources import CLUSTER, ENDPOINT
from control_plane.xds.stream import MAX_PENDING
from harness.models import endpoint, server
from tests.xds_helpers import delta_request, parse_delta, snapshot, two_servers


def new_stream() -> DeltaStream:
    return DeltaStream(control_plane_id="cp-test")


def test_wildcard_cds_sends_every_cluster_with_versions() -> None:
    stream, snap = new_stream(), two_servers()
    stream.on_request(delta_request(CLUSTER))
    [out] = stream.responses(snap)
    response = parse_delta(out.payload)
    assert {r.name: r.version for r in response.resources} == {
        name: r.version for name, r in snap.of_type(CLUSTER).items()
    }
    assert response.system_version_info == snap.versions[CLUSTER]
    assert response.control_plane.identifier == "cp-test"


def test_an_ack_records_versions_and_sends_nothing_more() -> None:
    stream, snap = new_stream(), two_servers()
    stream.on_request(delta_request(CLUSTER))
    [out] = stream.responses(snap)
    outcome = stream.on_request(delta_request(CLUSTER, nonce=out.nonce))
    assert outcome.ack == snap.versions[CLUSTER]
    assert stream.status[CLUSTER].state == "SYNCED"
    assert stream.acked[CLUSTER] == {n: r.version for n, r in snap.of_type(CLUSTER).items()}
    assert stream.responses(snap) == []


def test_reconnect_resends_only_what_differs_and_removes_what_is_gone() -> None:
    snap = two_servers()
    echo = snap.of_type(CLUSTER)["default_echo"]
    stream = new_stream()
    stream.on_request(
        delta_request(
            CLUSTER,
            initial={
                "default_echo": echo.version,
                "default_api": "old",
                "default_gone": "x",
            },
        )
    )
    [out] = stream.responses(snap)
    response = parse_delta(out.payload)
    assert [r.name for r in response.resources] == ["default_api"]
    assert list(response.removed_resources) == ["default_gone"]


def test_reconnect_with_everything_current_gets_an_empty_response_only() -> None:
    snap = two_servers()
    stream = new_stream()
    stream.on_request(
        delta_request(CLUSTER, initial={n: r.version for n, r in snap.of_type(CLUSTER).items()})
    )
    [out] = stream.responses(snap)
    assert out.resource_names == []
    assert out.removed == []
    stream.on_request(delta_request(CLUSTER, nonce=out.nonce))
    assert stream.status[CLUSTER].state == "SYNCED"
    assert stream.responses(snap) == []


def test_a_removed_server_is_sent_as_a_removal() -> None:
    stream = new_stream()
    stream.on_request(delta_request(CLUSTER))
    [out] = stream.responses(two_servers())
    stream.on_request(delta_request(CLUSTER, nonce=out.nonce))
    [removal] = stream.responses(snapshot(server("echo", endpoint("r1", 8081))))
    response = parse_delta(removal.payload)
    assert list(response.removed_resources) == ["default_api"]
    assert len(response.resources) == 0


def test_a_nack_is_recorded_and_the_rejected_version_is_not_resent() -> None:
    stream, snap = new_stream(), two_servers()
    stream.on_request(delta_request(ENDPOINT, subscribe=("default_echo",)))
    [out] = stream.responses(snap)
    outcome = stream.on_request(delta_request(ENDPOINT, nonce=out.nonce, error="bad endpoint"))
    assert outcome.nack is not None
    assert outcome.nack.message == "bad endpoint"
    assert stream.status[ENDPOINT].state == "NACKED"
    assert stream.acked[ENDPOINT] == {}
    assert stream.responses(snap) == []
    [retry] = stream.responses(two_servers(echo_port=9000))
    assert retry.resource_names == ["default_echo"]


def test_unsubscribe_stops_updates_and_resubscribe_sends_again() -> None:
    stream, snap = new_stream(), two_servers()
    stream.on_request(delta_request(ENDPOINT, subscribe=("default_echo", "default_api")))
    [out] = stream.responses(snap)
    stream.on_request(delta_request(ENDPOINT, nonce=out.nonce, unsubscribe=("default_api",)))
    assert stream.responses(two_servers(api_port=9999)) == []
    stream.on_request(delta_request(ENDPOINT, subscribe=("default_api",)))
    [again] = stream.responses(two_servers(api_port=9999))
    assert again.resource_names == ["default_api"]


def test_an_unknown_nonce_is_stale_but_subscriptions_still_apply() -> None:
    stream = new_stream()
    stream.on_request(delta_request(ENDPOINT, subscribe=("default_echo",)))
    outcome = stream.on_request(
        delta_request(ENDPOINT, nonce="999", subscribe=("default_api",), error="from nowhere")
    )
    assert outcome.stale
    assert stream.status[ENDPOINT].last_nack is None
    assert stream.status[ENDPOINT].names == {"default_echo", "default_api"}


def test_a_changed_cluster_is_followed_by_its_endpoints() -> None:
    stream = new_stream()
    stream.on_request(delta_request(CLUSTER))
    stream.on_request(delta_request(ENDPOINT, subscribe=("default_echo", "default_api")))
    stream.responses(two_servers())
    changed = snapshot(
        server("echo", endpoint("r1", 8081), protocol="grpc"), server("api", endpoint("r2", 8082))
    )
    push = stream.responses(changed)
    assert [(o.type_url, o.resource_names) for o in push] == [
        (CLUSTER, ["default_echo"]),
        (ENDPOINT, ["default_echo"]),
    ]


def test_the_first_response_goes_out_even_when_nothing_exists() -> None:
    stream = new_stream()
    stream.on_request(delta_request(CLUSTER))
    [out] = stream.responses(snapshot())
    assert parse_delta(out.payload).resources == []


def test_a_proxy_that_never_answers_holds_at_most_32_pending_responses() -> None:
    stream = new_stream()
    stream.on_request(delta_request(ENDPOINT, subscribe=("default_echo",)))
    nonces = []
    for port in range(8000, 8040):  # 40 different endpoint sets, none ACKed
        [out] = stream.responses(snapshot(server("echo", endpoint("r1", port))))
        nonces.append(out.nonce)
    assert stream.pending(ENDPOINT) == MAX_PENDING
    # The oldest were forgotten: their late ACK is stale; the newest is still answerable.
    assert stream.on_request(delta_request(ENDPOINT, nonce=nonces[0])).stale
    assert stream.on_request(delta_request(ENDPOINT, nonce=nonces[-1])).ack is not None
