"""Published load records: what a process publishes, and how a reader sums the others'
records, leaving out its own, its group's, stale ones and hostile ones (reported)."""

from __future__ import annotations

import math

import pytest

from control_plane.admin.loadwire import totals_message
from control_plane.fleet.records import (
    MAX_RECORD_BYTES,
    MAX_SKEW,
    Problem,
    encode,
    publishable,
    remote,
)
from control_plane.load.reports import PER_PROXY, PER_SERVER
from control_plane.load.totals import (
    MILLION,
    NEVER,
    LoadTotals,
    RegionTotals,
    ServerTotals,
)
from control_plane.registry.model import LoadRecord

NOW = 1_800_000_000.0  # unix seconds
OFFSET = NOW - 500.0  # wall minus monotonic: monotonic now is 500


def totals(*servers: ServerTotals, proxies: int = 1) -> LoadTotals:
    return LoadTotals(servers=servers, proxies=proxies, interval=1.0, at=500.0)


def server(name: str, in_flight: float = 0.0, *, ready: int = 0, **more: object) -> ServerTotals:
    star = RegionTotals(region="*", in_flight=round(in_flight * MILLION), ready=ready)
    return ServerTotals(server=name, regions=(star,), **more)  # type: ignore[arg-type]


def record(
    publisher: str,
    value: LoadTotals | None = None,
    *,
    group: str = "",
    written_at: float = NOW,
    interval: float = 1.0,
    data: bytes | None = None,
    size: int | None = None,
) -> LoadRecord:
    if data is None and value is not None:
        data = encode(value, wall_offset=OFFSET)
    return LoadRecord(
        publisher=publisher,
        group=group or publisher,
        written_at=written_at,
        interval=interval,
        totals=data,
        size=len(data) if size is None and data is not None else (size or 0),
    )


def summed(
    *records: LoadRecord, me: str = "me", group: str = "me"
) -> tuple[LoadTotals, list[Problem]]:
    result = remote(records, publisher=me, group=group, now=NOW, wall_offset=OFFSET)
    return result.totals, list(result.problems)


def in_flight(value: LoadTotals, name: str) -> float:
    for s in value.servers:
        if s.server == name:
            star = s.region("*")
            return star.in_flight / MILLION if star is not None else 0.0
    return 0.0


def test_only_servers_with_load_cold_starts_or_a_wake_are_published_without_ready() -> None:
    value = totals(
        server("busy", 3, ready=2),
        server("idle", 0, ready=5),
        server("cold", 0, cold_starts=2),
        server("woken", 0, woken_at=400.0),
    )
    published = publishable(value)
    assert [s.server for s in published.servers] == ["busy", "cold", "woken"]
    assert all(r.ready == 0 for s in published.servers for r in s.regions)


def test_a_wake_travels_in_wall_time_and_comes_back_on_the_readers_clock() -> None:
    value = totals(server("a", 1, woken_at=480.0))
    other_offset = OFFSET + 1000.0  # the reader's monotonic clock started elsewhere
    result = remote(
        [record("b", value)], publisher="me", group="me", now=NOW, wall_offset=other_offset
    )
    [woken] = result.totals.servers
    assert woken.woken_at == pytest.approx(480.0 + OFFSET - other_offset)


def test_others_are_summed_and_own_and_sibling_records_are_left_out() -> None:
    value, problems = summed(
        record("me", totals(server("a", 100))),
        record("sibling", totals(server("a", 10)), group="me"),
        record("b", totals(server("a", 3))),
        record("c", totals(server("a", 4), server("x", 1), proxies=2)),
    )
    assert in_flight(value, "a") == 7
    assert in_flight(value, "x") == 1
    assert value.proxies == 3
    assert problems == []


def test_a_record_older_than_three_intervals_stops_counting_and_is_no_problem() -> None:
    value, problems = summed(
        record("b", totals(server("a", 3)), written_at=NOW - 2.9),
        record("c", totals(server("a", 4)), written_at=NOW - 3.1),
        record("d", totals(server("a", 5)), written_at=NOW - 3.1, interval=2.0),
    )
    assert in_flight(value, "a") == 8
    assert problems == []


@pytest.mark.parametrize(
    ("bad", "reason", "field"),
    [
        (record("evil", data=b"\xff\xff\xff"), "malformed", "totals"),
        (record("evil", data=None, size=10), "malformed", "totals"),
        (record("evil", totals(server("a", 1)), written_at=math.nan), "malformed", "written_at"),
        (record("evil", totals(server("a", 1)), interval=0.0), "malformed", "interval"),
        (record("evil", totals(server("a", 1)), interval=math.inf), "malformed", "interval"),
        (record("evil", totals(server("a", 1)), interval=-1.0), "malformed", "interval"),
        (record("", totals(server("a", 1))), "malformed", "publisher"),
        (record("e" * 600, totals(server("a", 1))), "malformed", "publisher"),
        (
            record("evil", totals(server("a", 1)), written_at=NOW + MAX_SKEW + 1),
            "future",
            "written_at",
        ),
        (record("evil", data=None, size=MAX_RECORD_BYTES + 1), "huge", "totals"),
    ],
    ids=[
        "not-protobuf",
        "not-bytes",
        "nan-time",
        "zero-interval",
        "infinite-interval",
        "negative-interval",
        "no-publisher",
        "long-publisher",
        "future",
        "huge",
    ],
)
def test_a_hostile_record_is_ignored_and_reported_and_the_others_still_count(
    bad: LoadRecord, reason: str, field: str
) -> None:
    value, problems = summed(bad, record("b", totals(server("a", 3))))
    assert in_flight(value, "a") == 3
    assert [(p.reason, p.field) for p in problems] == [(reason, field)]
    assert len(problems[0].value) <= 80


def test_a_record_within_the_skew_counts() -> None:
    value, problems = summed(record("b", totals(server("a", 3)), written_at=NOW + MAX_SKEW - 0.1))
    assert in_flight(value, "a") == 3
    assert problems == []


def test_one_record_cannot_claim_more_for_a_server_than_one_proxy_may() -> None:
    claim = RegionTotals(region="*", in_flight=10**18, requests=10**18, errors=5, dropped=0)
    hostile = ServerTotals(server="a", regions=(claim,))
    value, problems = summed(record("evil", totals(hostile)), record("b", totals(server("a", 3))))
    assert in_flight(value, "a") == PER_SERVER.in_flight + 3
    [star] = next(s for s in value.servers if s.server == "a").regions
    assert star.requests == PER_SERVER.requests_per_second * MILLION
    assert star.errors == 5
    assert [p.reason for p in problems] == ["clipped"]


def test_one_record_cannot_claim_more_over_all_servers_than_one_proxy_may() -> None:
    many = [server(f"s{i:03}", PER_SERVER.in_flight) for i in range(100)]
    value, problems = summed(record("evil", totals(*many)))
    total = sum(in_flight(value, s.server) for s in many)
    assert total <= PER_PROXY.in_flight
    assert total == pytest.approx(PER_PROXY.in_flight, rel=1e-6)
    assert [p.reason for p in problems] == ["clipped"]


def test_a_wake_from_the_future_or_not_a_number_is_dropped_but_the_load_counts() -> None:
    message = totals_message(totals(server("a", 2, woken_at=NOW + 3600), server("b", 1)))
    message.servers[1].woken_at = math.nan
    value, problems = summed(record("x", data=message.SerializeToString()))
    assert [s.woken_at for s in value.servers] == [NEVER, NEVER]
    assert in_flight(value, "a") == 2
    assert problems == []


def test_a_publisher_named_twice_counts_once() -> None:
    value, _ = summed(
        record("b", totals(server("a", 3))), record("b", totals(server("a", 3)), written_at=NOW - 1)
    )
    assert in_flight(value, "a") == 3


def test_a_record_is_decoded_once_and_forgotten_when_it_is_no_longer_read() -> None:
    cache: dict = {}  # type: ignore[type-arg]
    first = record("b", totals(server("a", 3)))
    remote([first], publisher="me", group="me", now=NOW, wall_offset=OFFSET, decoded=cache)
    assert len(cache) == 1
    [key] = cache
    cache[key] = (totals(server("a", 9)), None)  # what a second decode would not produce
    again = remote([first], publisher="me", group="me", now=NOW, wall_offset=OFFSET, decoded=cache)
    assert in_flight(again.totals, "a") == 9
    newer = record("b", totals(server("a", 4)), written_at=NOW + 0.5)
    later = remote([newer], publisher="me", group="me", now=NOW, wall_offset=OFFSET, decoded=cache)
    assert in_flight(later.totals, "a") == 4
    assert len(cache) == 1


def test_one_record_cannot_claim_more_proxies_than_one_process_may_count() -> None:
    value, _ = summed(record("evil", totals(server("a", 1), proxies=4_000_000_000)))
    assert value.proxies == 20_000


def test_a_record_rewritten_yet_always_stale_is_a_clock_behind_and_is_reported() -> None:
    written: dict[str, tuple[float, float]] = {}

    def read(at: float, now: float) -> list[str]:
        result = remote(
            [record("b", totals(server("a", 3)), written_at=at)],
            publisher="me",
            group="me",
            now=now,
            wall_offset=OFFSET,
            written=written,
        )
        assert result.totals.servers == ()  # never counts: it is too old
        return [p.reason for p in result.problems]

    assert read(NOW - 10, NOW) == []  # first sight: a stopped publisher, or not
    assert read(NOW - 9.5, NOW + 0.5) == ["behind"]  # it moved: written 10 s behind
    assert read(NOW - 9.5, NOW + 1.0) == ["behind"]  # still within 3 intervals of the move
    assert read(NOW - 9.5, NOW + 4.0) == []  # stopped moving: a stopped publisher


def test_withheld_candidates_cross_the_records_and_the_sum_withholds() -> None:
    """A control plane still waiting for its replicas' load of a server (issue 29) publishes
    that; the others' sum withholds the server's candidates too, whichever record says so, and
    through the clipping of a hostile record's claims."""
    published = publishable(totals(server("a", 3, ready=2, withheld=True), server("b", 1)))
    assert [s.withheld for s in published.servers] == [True, False]
    value, problems = summed(
        record("b", totals(server("a", 3, withheld=True))),
        record("c", totals(server("a", 1), server("b", 1))),
    )
    assert {s.server: s.withheld for s in value.servers} == {"a": True, "b": False}
    assert problems == []
    many = [server(f"s{i:03}", PER_SERVER.in_flight, withheld=i == 7) for i in range(100)]
    value, problems = summed(record("evil", totals(*many)))
    assert [s.server for s in value.servers if s.withheld] == ["s007"]
    assert [p.reason for p in problems] == ["clipped"]
