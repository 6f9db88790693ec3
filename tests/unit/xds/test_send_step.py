"""The one send step of both protocols (``BaseStream._send``): every response it builds is,
byte for byte, what the response encoders make of the same fields and nonce, and it counts
and records the send alike for SotW and delta."""

from __future__ import annotations

import itertools

import pytest

from control_plane.xds.delta import DeltaStream
from control_plane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    control_plane_field,
    delta_response,
    sotw_response,
)
from control_plane.xds.sotw import SotwStream
from control_plane.xds.stream import EMPTY_VERSION
from tests.xds_helpers import delta_request, sotw_request, two_servers

UNKNOWN = "type.googleapis.com/example.Unknown"


@pytest.mark.parametrize("first_nonce", [1, 10**40], ids=["short-nonce", "40-digit-nonce"])
def test_sotw_responses_are_the_encoders_bytes(first_nonce: int) -> None:
    stream, snap = SotwStream(control_plane_id="cp-test"), two_servers()
    stream._nonces = itertools.count(first_nonce)
    stream.on_request(sotw_request(CLUSTER))
    stream.on_request(sotw_request(UNKNOWN))
    cds, unknown = stream.responses(snap)
    cp = control_plane_field(identifier="cp-test", field_number=6)
    clusters = [snap.of_type(CLUSTER)[name] for name in cds.resource_names]
    assert cds.payload == sotw_response(
        version_info=cds.version, resources=clusters, type_url=CLUSTER, nonce=cds.nonce,
        control_plane=cp,
    )  # fmt: skip
    assert unknown.payload == sotw_response(
        version_info=EMPTY_VERSION, resources=[], type_url=UNKNOWN, nonce=unknown.nonce,
        control_plane=cp,
    )  # fmt: skip
    assert (cds.nonce, unknown.nonce) == (str(first_nonce), str(first_nonce + 1))
    status = stream.status
    assert (status[CLUSTER].pushes, status[CLUSTER].resources_sent) == (1, 2)
    assert status[CLUSTER].sent_version == cds.version
    assert status[CLUSTER].sent_committed_at > 0.0
    # The empty answer to a type not served carries no commit time.
    assert (status[UNKNOWN].sent_version, status[UNKNOWN].sent_committed_at) == (EMPTY_VERSION, 0.0)
    # Only the latest nonce of a type is answerable.
    assert stream.on_request(sotw_request(CLUSTER, nonce=cds.nonce, version=cds.version)).ack


@pytest.mark.parametrize("first_nonce", [1, 10**40], ids=["short-nonce", "40-digit-nonce"])
def test_delta_responses_are_the_encoders_bytes(first_nonce: int) -> None:
    stream, snap = DeltaStream(control_plane_id="cp-test"), two_servers()
    stream._nonces = itertools.count(first_nonce)
    stream.on_request(delta_request(CLUSTER))
    stream.on_request(delta_request(ENDPOINT, subscribe=tuple(snap.of_type(ENDPOINT))))
    stream.on_request(delta_request(UNKNOWN))
    cds, eds, unknown = stream.responses(snap)
    cp = control_plane_field(identifier="cp-test", field_number=7)
    for out, type_url in ((cds, CLUSTER), (eds, ENDPOINT)):
        resources = [snap.of_type(type_url)[name] for name in out.resource_names]
        assert out.payload == delta_response(
            system_version_info=out.version, resources=resources, removed=[], type_url=type_url,
            nonce=out.nonce, control_plane=cp,
        )  # fmt: skip
        assert stream.pending(type_url) == 1
        assert stream.status[type_url].resources_sent == len(resources) == 2
    assert unknown.payload == delta_response(
        system_version_info=EMPTY_VERSION, resources=[], removed=[], type_url=UNKNOWN,
        nonce=unknown.nonce, control_plane=cp,
    )  # fmt: skip
    assert [o.nonce for o in (cds, eds, unknown)] == [str(first_nonce + i) for i in range(3)]
    # Each nonce awaits its answer, and the answer is checked against what it sent.
    outcome = stream.on_request(delta_request(CLUSTER, nonce=cds.nonce))
    assert outcome.ack == cds.version
    assert stream.acked[CLUSTER] == {n: r.version for n, r in snap.of_type(CLUSTER).items()}
