"""``servers rollout`` checks everything before it writes, on a real SQLite registry: each bad
input is refused naming its field, in a bounded message, and nothing is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.registry.errors import ConflictError, NotFoundError, RegistryError
from control_plane.registry.sqlite import SqliteRegistry
from control_plane.rollout import commands

LONG = "x" * 5000


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[SqliteRegistry]:
    registry = SqliteRegistry(f"sqlite://{tmp_path / 'r.db'}")
    registry.put_server(name="chat", hostnames=["chat.local"], protocol="http")
    registry.register_replica(server="chat", address="127.0.0.1:9001", region="r", revision="v1")
    registry.register_replica(server="chat", address="127.0.0.1:9002", region="r", revision="v2")
    registry.register_replica(
        server="chat", address="127.0.0.1:9003", region="r", revision="v3", state="STARTING"
    )
    yield registry
    registry.close()


def start(registry: SqliteRegistry, **changes: Any) -> None:
    arguments: dict[str, Any] = {
        "server": "chat",
        "target": "v2",
        "steps": [5, 25, 50, 100],
        "interval": "30s",
        "max_error_rate": "1%",
        "min_requests": 100,
        "now": 1000.0,
    }
    commands.start(registry, **{**arguments, **changes})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"target": "v3"}, "to", id="no-ready-replica"),
        pytest.param({"target": "v9"}, "to", id="unknown-revision"),
        pytest.param({"target": "V2"}, "to", id="not-a-revision"),
        pytest.param({"target": LONG}, "to", id="long-revision"),
        pytest.param({"steps": [5, 5, 100]}, "steps", id="steps-not-increasing"),
        pytest.param({"steps": [5, 50]}, "steps", id="steps-not-ending-at-100"),
        pytest.param({"steps": [0, 100]}, "steps[0]", id="steps-zero"),
        pytest.param({"interval": "0s"}, "interval", id="interval-zero"),
        pytest.param({"interval": "1ms"}, "interval", id="interval-short"),
        pytest.param({"interval": LONG}, "interval", id="interval-long"),
        pytest.param({"max_error_rate": "101%"}, "max-error-rate", id="rate-over"),
        pytest.param({"max_error_rate": LONG}, "max-error-rate", id="rate-long"),
        pytest.param({"min_requests": -1}, "min-requests", id="min-negative"),
        pytest.param({"server": LONG}, "server", id="server-long"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    registry: SqliteRegistry, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(RegistryError) as caught:
        start(registry, **changes)
    assert getattr(caught.value, "field", None) == field
    assert len(str(caught.value)) < 300
    assert registry.read_rollouts(max_rows=10, max_bytes=10_000) == []


def test_an_unknown_server_and_a_second_rollout_are_refused(registry: SqliteRegistry) -> None:
    with pytest.raises(NotFoundError, match="unknown server 'nope'"):
        start(registry, server="nope")
    start(registry)
    with pytest.raises(ConflictError, match="has a rollout running"):
        start(registry, target="v2")
    [row] = registry.read_rollouts(max_rows=10, max_bytes=10_000)
    record = commands.read(registry, "chat")
    assert (row.state, record.target, record.steps) == ("running", "v2", (5, 25, 50, 100))
    # The default split (100% latest) starts from v1: the newest READY revision but the target.
    assert [(t.revision, t.percent) for t in record.base] == [("v1", 100)]
    assert record.before == ()
