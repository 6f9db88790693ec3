"""Published load records (``control_plane/fleet/``) in every store: one record per publisher,
rewritten in place, read newest first within the bounds, old ones forgotten; a write moves no
revision, so the routing watch never sees one."""

from __future__ import annotations

import time

from control_plane.registry import Registry
from control_plane.registry.model import LoadRecord


def record(publisher: str, *, written_at: float, totals: bytes = b"\x08\x01") -> LoadRecord:
    return LoadRecord(
        publisher=publisher,
        group="g-" + publisher,
        written_at=written_at,
        interval=0.5,
        totals=totals,
        size=len(totals),
    )


def test_a_record_per_publisher_newest_first_and_no_revision_moves(registry: Registry) -> None:
    now = time.time()
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    before = registry.read_state()
    registry.publish_load(record("a", written_at=now - 2), forget_before=now - 600)
    registry.publish_load(record("b", written_at=now - 1, totals=b"x" * 100), forget_before=0)
    registry.publish_load(record("a", written_at=now, totals=b"\x10\x02"), forget_before=0)
    read = registry.read_load(max_records=10, max_bytes=50)
    assert [(r.publisher, r.group, r.written_at, r.interval) for r in read] == [
        ("a", "g-a", now, 0.5),
        ("b", "g-b", now - 1, 0.5),
    ]
    assert read[0].totals == b"\x10\x02"
    assert (read[1].totals, read[1].size) == (None, 100)  # past max_bytes: not read
    assert [r.publisher for r in registry.read_load(max_records=1, max_bytes=50)] == ["a"]
    # What the watch follows: SQLite's revision and commit time (Spanner's revision is a count
    # of its own reads; its watch follows the rows' UpdatedAt, whose newest is committed_at).
    after = registry.read_state()
    assert after.committed_at == before.committed_at
    if registry.url.startswith("sqlite"):
        assert after.revision == before.revision


def test_records_written_before_forget_before_are_deleted(registry: Registry) -> None:
    now = time.time()
    registry.publish_load(record("old", written_at=now - 1000), forget_before=0)
    registry.publish_load(record("new", written_at=now), forget_before=now - 600)
    read = registry.read_load(max_records=10, max_bytes=1000)
    assert [r.publisher for r in read] == ["new"]
