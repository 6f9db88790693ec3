"""Load totals merge like a value: ``merge`` is associative and commutative with ``EMPTY`` its
identity, whatever the servers, regions and numbers, so any number of processes' totals merge
to one answer in any order; and a message carries them there and back unchanged."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from control_plane.admin.loadwire import totals_from, totals_message
from control_plane.load.totals import (
    EMPTY,
    NEVER,
    LoadTotals,
    RegionTotals,
    ReplicaTotals,
    ServerTotals,
    merge_servers,
)

counts = st.integers(min_value=0, max_value=10**12)
times = st.one_of(st.just(NEVER), st.floats(min_value=0, max_value=1e9))
regions = st.lists(
    st.builds(
        RegionTotals,
        region=st.sampled_from(["*", "us-west", "us-east", "eu"]),
        in_flight=counts,
        requests=counts,
        errors=counts,
        dropped=counts,
        ready=st.integers(min_value=0, max_value=1000),
    ),
    max_size=4,
    unique_by=lambda r: r.region,
).map(lambda found: tuple(sorted(found, key=lambda r: r.region)))
positive = st.integers(min_value=1, max_value=10**12)
replica_ids = st.sampled_from(["r1", "r2", "r3", "r10"])
revision_names = st.sampled_from(["", "v1", "v2", "canary-3"])
replicas = st.lists(
    st.one_of(
        st.builds(ReplicaTotals, replica=replica_ids, in_flight=positive, requests=counts),
        st.builds(ReplicaTotals, replica=replica_ids, in_flight=counts, requests=positive),
        # Issue 26: errors per second and the replica's revision.
        st.builds(
            ReplicaTotals,
            replica=replica_ids,
            in_flight=counts,
            requests=counts,
            errors=positive,
            revision=revision_names,
        ),
    ),
    max_size=4,
    unique_by=lambda r: r.replica,
).map(lambda found: tuple(sorted(found, key=lambda r: r.replica)))
ready_replicas = st.lists(
    st.tuples(replica_ids, st.sampled_from(["us-west", "us-east"])),
    max_size=4,
    unique=True,
).map(lambda found: tuple(sorted(found)))


@st.composite
def ready_with_revisions(
    draw: st.DrawFn,
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """Ready replicas and, where one carries a revision, every one's (id, revision): as a
    process's routing table gives them (one revision per replica)."""
    ready = draw(ready_replicas)
    revision_of = {replica: draw(revision_names) for replica, _ in ready}
    if not any(revision_of.values()):
        return ready, ()
    return ready, tuple(sorted(revision_of.items()))


def server_totals(
    name: str,
    regions: tuple[RegionTotals, ...],
    replicas: tuple[ReplicaTotals, ...],
    ready: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]],
    cold_starts: int,
    woken_at: float,
) -> ServerTotals:
    return ServerTotals(
        server=name,
        regions=regions,
        replicas=replicas,
        ready_replicas=ready[0],
        revisions=ready[1],
        cold_starts=cold_starts,
        woken_at=woken_at,
    )


servers = st.lists(
    st.builds(
        server_totals,
        st.sampled_from(["echo", "gpu", "api", "a-b"]),
        regions,
        replicas,
        ready_with_revisions(),
        counts,
        times,
    ),
    max_size=4,
    unique_by=lambda s: s.server,
).map(lambda found: tuple(sorted(found, key=lambda s: s.server)))
totals = st.builds(
    LoadTotals,
    servers=servers,
    proxies=st.integers(min_value=0, max_value=10**6),
    interval=st.floats(min_value=0, max_value=3600),
    at=st.one_of(st.just(math.inf), st.floats(min_value=0, max_value=1e9)),
)


@given(totals, totals, totals)
def test_merge_is_associative(a: LoadTotals, b: LoadTotals, c: LoadTotals) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(totals, totals)
def test_merge_is_commutative(a: LoadTotals, b: LoadTotals) -> None:
    assert a.merge(b) == b.merge(a)


@given(totals)
def test_empty_is_the_identity(a: LoadTotals) -> None:
    assert a.merge(EMPTY) == a
    assert EMPTY.merge(a) == a


@given(st.lists(totals, max_size=5))
def test_merging_servers_alone_agrees_with_merging_totals(parts: list[LoadTotals]) -> None:
    merged = EMPTY
    for part in parts:
        merged = merged.merge(part)
    assert merge_servers(p.servers for p in parts) == merged.servers


@given(totals)
def test_a_message_carries_totals_unchanged(a: LoadTotals) -> None:
    assert totals_from(totals_message(a)) == a


@given(totals, totals)
def test_a_merge_adds_load_and_keeps_the_most_ready_replicas(a: LoadTotals, b: LoadTotals) -> None:
    merged = {s.server: s for s in a.merge(b).servers}
    for name, server in merged.items():
        parts = [s for s in (*a.servers, *b.servers) if s.server == name]
        assert server.cold_starts == sum(p.cold_starts for p in parts)
        assert server.woken_at == max(p.woken_at for p in parts)
        for region in server.regions:
            mine = [r for p in parts if (r := p.region(region.region)) is not None]
            assert region.in_flight == sum(r.in_flight for r in mine)
            assert region.ready == max(r.ready for r in mine)


@given(totals, totals)
def test_a_merge_adds_replica_load_and_unites_ready_replicas(a: LoadTotals, b: LoadTotals) -> None:
    merged = {s.server: s for s in a.merge(b).servers}
    for name, server in merged.items():
        parts = [s for s in (*a.servers, *b.servers) if s.server == name]
        assert [r.replica for r in server.replicas] == sorted(
            {r.replica for p in parts for r in p.replicas}
        )
        for replica in server.replicas:
            mine = [r for p in parts for r in p.replicas if r.replica == replica.replica]
            assert replica.in_flight == sum(r.in_flight for r in mine)
            assert replica.requests == sum(r.requests for r in mine)
            assert replica.errors == sum(r.errors for r in mine)
            assert replica.revision == max(r.revision for r in mine)
        assert server.ready_replicas == tuple(
            sorted({pair for p in parts for pair in p.ready_replicas})
        )
        assert server.revisions == tuple(sorted({pair for p in parts for pair in p.revisions}))
