"""State-of-the-world protocol rules, driven request by request."""

from __future__ import annotations

from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control_plane.xds.sotw import SotwStream
from harness.models import endpoint, server
from tests.xds_helpers import parse_sotw, snapshot, sotw_request, two_servers


def new_stream() -> SotwStream:
    return SotwStream(control_plane_id="cp-test")


def test_wildcard_cds_gets_every_cluster_with_the_type_version() -> None:
    stream, snap = new_stream(), two_servers()
    stream.on_request(sotw_request(CLUSTER))
    [out] = stream.responses(snap)
    response = parse_sotw(out.payload)
    assert response.version_info == snap.versions[CLUSTER]
    assert response.nonce == out.nonce
    assert response.control_plane.identifier == "cp-test"
    assert sorted(out.resource_names) == ["default_api", "default_echo"]


def test_an_ack_is_recorded_and_triggers_nothing() -> None:
    stream, snap = new_stream(), two_servers()
    stream.on_request(sotw_request(CLUSTER))
    [out] = stream.responses(snap)
    outcome = stream.on_request(sotw_request(CLUSTER, nonce=out.nonce, version=out.version))
    assert outcome.ack == out.version
    assert not outcome.resubscribed
    assert stream.status[CLUSTER].state == "SYNCED"
    assert stream.responses(snap) == []


def test_a_request_with_a_stale_nonce_is_ignored_entirely() -> None:
    stream = new_stream()
    stream.on_request(sotw_request(ENDPOINT, names=("default_echo",)))
    [first] = stream.responses(two_servers())
    [second] = stream.responses(two_servers(echo_port=9000))
    outcome = stream.on_request(
        sotw_request(ENDPOINT, names=("default_api",), nonce=first.nonce, error="late NACK")
    )
    assert outcome.stale
    assert stream.status[ENDPOINT].names == {"default_echo"}
    assert stream.status[ENDPOINT].last_nack is None
    assert second.nonce != first.nonce


def test_a_nacked_version_is_recorded_and_never_resent() -> None:
    stream, snap = new_stream(), two_servers()
    stream.on_request(sotw_request(CLUSTER))
    [out] = stream.responses(snap)
    outcome = stream.on_request(sotw_request(CLUSTER, nonce=out.nonce, error="bad cluster"))
    assert outcome.nack is not None
    assert outcome.nack.message == "bad cluster"
    assert stream.status[CLUSTER].state == "NACKED"
    assert stream.responses(snap) == []
    assert stream.responses(snap) == []
    changed = snapshot(server("echo", endpoint("r1", 8081), protocol="http2"))
    [retry] = stream.responses(changed)
    assert retry.version == changed.versions[CLUSTER]


def test_named_eds_sends_only_subscribed_and_only_changed_resources() -> None:
    stream = new_stream()
    stream.on_request(sotw_request(ENDPOINT, names=("default_echo",)))
    [out] = stream.responses(two_servers())
    assert out.resource_names == ["default_echo"]
    stream.on_request(
        sotw_request(ENDPOINT, names=("default_echo",), nonce=out.nonce, version=out.version)
    )
    assert stream.responses(two_servers(api_port=9999)) == []
    [update] = stream.responses(two_servers(echo_port=9000, api_port=9999))
    assert update.resource_names == ["default_echo"]


def test_a_subscription_change_sends_just_the_added_resource() -> None:
    stream, snap = new_stream(), two_servers()
    stream.on_request(sotw_request(ENDPOINT, names=("default_echo",)))
    [out] = stream.responses(snap)
    outcome = stream.on_request(
        sotw_request(
            ENDPOINT, names=("default_echo", "default_api"), nonce=out.nonce, version=out.version
        )
    )
    assert outcome.resubscribed
    [added] = stream.responses(snap)
    assert added.resource_names == ["default_api"]
    assert parse_sotw(added.payload).version_info != out.version


def test_a_changed_cluster_is_followed_by_its_endpoints_in_the_same_push() -> None:
    stream = new_stream()
    stream.on_request(sotw_request(CLUSTER))
    stream.on_request(sotw_request(ENDPOINT, names=("default_echo", "default_api")))
    first = stream.responses(two_servers())
    assert [o.type_url for o in first] == [CLUSTER, ENDPOINT]
    changed = snapshot(
        server("echo", endpoint("r1", 8081), protocol="http2"), server("api", endpoint("r2", 8082))
    )
    push = stream.responses(changed)
    assert [o.type_url for o in push] == [CLUSTER, ENDPOINT]
    assert push[1].resource_names == ["default_echo"]


def test_pushes_go_out_in_ads_order() -> None:
    stream = new_stream()
    for type_url in (ROUTE, LISTENER, ENDPOINT, CLUSTER):
        names = ("ingress_http",) if type_url == ROUTE else ("default_echo",)
        stream.on_request(
            sotw_request(type_url, names=() if type_url in (CLUSTER, LISTENER) else names)
        )
    push = stream.responses(two_servers())
    assert [o.type_url for o in push] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


def test_a_reconnecting_proxy_with_the_current_version_gets_nothing() -> None:
    snap = two_servers()
    stream = new_stream()
    stream.on_request(sotw_request(CLUSTER, version=snap.versions[CLUSTER]))
    assert stream.responses(snap) == []
    assert stream.status[CLUSTER].state == "SYNCED"
    stale = new_stream()
    stale.on_request(sotw_request(CLUSTER, version="some-old-version"))
    assert len(stale.responses(snap)) == 1
