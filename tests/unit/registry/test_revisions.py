"""A server's revisions from its replicas: newest first by the earliest registration of each,
READY counted with the lease, ``latest`` the newest revision with a READY replica."""

from __future__ import annotations

import pytest

from control_plane.registry.model import Replica
from control_plane.registry.revisions import Revisions, is_alive, of_replicas

NOW = 1_000.0


def replica(
    rid: str,
    revision: str,
    registered_at: float,
    *,
    state: str = "READY",
    lease: float | None = None,
) -> Replica:
    return Replica(
        id=rid,
        server="echo",
        host="127.0.0.1",
        port=8080,
        region="us-west",
        state=state,
        lease_expires_at=lease,
        revision=revision,
        registered_at=registered_at,
    )


def summary(revisions: Revisions) -> list[tuple[str, int, int, float, bool]]:
    return [(r.name, r.ready, r.replicas, r.registered_at, r.latest) for r in revisions.revisions]


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        pytest.param([], [], id="no-replicas"),
        pytest.param(
            [replica("a", "", 0.0)], [("", 1, 1, 0.0, True)], id="old-rows-are-revision-none"
        ),
        pytest.param(
            [replica("a", "v1", 100), replica("b", "v2", 200), replica("c", "v1", 300)],
            [("v2", 1, 1, 200, True), ("v1", 2, 2, 100, False)],
            id="age-is-the-earliest-replica",
        ),
        pytest.param(
            [replica("a", "v1", 100), replica("b", "v2", 200, state="STARTING")],
            [("v2", 0, 1, 200, False), ("v1", 1, 1, 100, True)],
            id="latest-needs-a-ready-replica",
        ),
        pytest.param(
            [replica("a", "v1", 100), replica("b", "v2", 200, state="DRAINING")],
            [("v2", 0, 1, 200, False), ("v1", 1, 1, 100, True)],
            id="draining-is-not-ready",
        ),
        pytest.param(
            [replica("a", "v1", 100), replica("b", "v2", 200, lease=NOW)],
            [("v2", 0, 1, 200, False), ("v1", 1, 1, 100, True)],
            id="an-expired-lease-is-not-ready",
        ),
        pytest.param(
            [replica("a", "v1", 100), replica("b", "v2", 200, lease=NOW + 1)],
            [("v2", 1, 1, 200, True), ("v1", 1, 1, 100, False)],
            id="a-live-lease-is-ready",
        ),
        pytest.param(
            [replica("a", "v1", 100, state="STARTING"), replica("b", "v2", 200, state="DRAINING")],
            [("v2", 0, 1, 200, False), ("v1", 0, 1, 100, False)],
            id="no-ready-replica-no-latest",
        ),
        pytest.param(
            [replica("a", "v1", 100), replica("b", "v2", 100)],
            [("v2", 1, 1, 100, True), ("v1", 1, 1, 100, False)],
            id="a-tie-goes-to-the-name-that-sorts-last",
        ),
        pytest.param(
            [replica("a", "", 0.0), replica("b", "v1", 50)],
            [("v1", 1, 1, 50, True), ("", 1, 1, 0.0, False)],
            id="a-revision-after-old-rows-is-latest",
        ),
    ],
)
def test_revisions_newest_first_and_latest(
    replicas: list[Replica], expected: list[tuple[str, int, int, float, bool]]
) -> None:
    revisions = of_replicas(replicas, now=NOW)
    assert summary(revisions) == expected
    assert revisions.invalid == ()
    latest = [name for name, *_, is_latest in expected if is_latest]
    assert (revisions.latest.name if revisions.latest else None) == (latest[0] if latest else None)


@pytest.mark.parametrize(
    "revision",
    ["latest", "V2", "v2\n", "-v2", "v_2", "a" * 64, "x" * 10_000, "b'\\x00'", "v2 ", "é"],
)
def test_a_replica_with_an_invalid_revision_is_apart_and_never_latest(revision: str) -> None:
    bad = replica("bad", revision, 900)
    revisions = of_replicas([replica("a", "v1", 100), bad], now=NOW)
    assert summary(revisions) == [("v1", 1, 1, 100, True)]
    assert revisions.invalid == (bad,)


def test_a_replica_is_alive_until_its_lease_runs_out() -> None:
    assert is_alive(replica("a", "v1", 0), now=NOW)
    assert is_alive(replica("a", "v1", 0, lease=NOW + 0.001), now=NOW)
    assert not is_alive(replica("a", "v1", 0, lease=NOW), now=NOW)
