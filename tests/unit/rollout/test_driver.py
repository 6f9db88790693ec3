"""The rollout driver on a real SQLite registry, with its clock and its load given: only the
lease holder acts, another takes over once the lease has run out and resumes at the recorded
step, a row that is not a record is a problem and the others go on, and the metrics follow."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from control_plane import metrics
from control_plane.registry.spec import decode
from control_plane.registry.sqlite import SqliteRegistry
from control_plane.rollout import commands
from control_plane.rollout.driver import RolloutDriver


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def traffic(registry: SqliteRegistry) -> list[object]:
    [server] = [s for s in registry.list_servers() if s.name == "chat"]
    return list(decode(server.spec).get("traffic", []))


def step_metric(server: str) -> float | None:
    return metrics.ROLLOUT_REGISTRY.get_sample_value("routeplane_rollout_step", {"server": server})


async def test_only_the_holder_acts_and_another_resumes_at_the_recorded_step(
    tmp_path: Path,
) -> None:
    registry = SqliteRegistry(f"sqlite://{tmp_path / 'r.db'}")
    clock = Clock(registry.read_state().committed_at + 1000.0)
    registry.put_server(
        name="chat",
        hostnames=["chat.local"],
        protocol="http",
        spec={"traffic": [{"revision": "v1", "percent": 100}]},
    )
    for revision in ("v1", "v2"):
        registry.register_replica(
            server="chat", address=f"127.0.0.1:{9000 + int(revision[1])}", region="r",
            revision=revision,
        )  # fmt: skip
    commands.start(
        registry,
        server="chat",
        target="v2",
        steps=[10, 50, 100],
        interval="10s",
        max_error_rate="1%",
        min_requests=10,
        now=clock.now,
    )
    rates = {"v1": (90.0, 0.0), "v2": (10.0, 0.0)}
    a = RolloutDriver(registry=registry, holder="a", rates=lambda _: rates, clock=clock)
    b = RolloutDriver(registry=registry, holder="b", rates=lambda _: rates, clock=clock)
    await a.tick()
    assert traffic(registry) == [
        {"revision": "v1", "percent": 90},
        {"revision": "v2", "percent": 10},
    ]
    assert step_metric("chat") == 10
    for _ in range(21):  # a holds it; b's looks change nothing
        clock.now += 0.5
        await a.tick()
        await b.tick()
    assert commands.read(registry, "chat").holder == "a"
    assert commands.read(registry, "chat").step == 1
    assert traffic(registry)[1] == {"revision": "v2", "percent": 50}
    # a dies mid-step: b waits for the lease to run out, then goes on in step 2, its split
    # already written (nothing is written again)
    clock.now += 2.9
    await b.tick()
    assert commands.read(registry, "chat").holder == "a"
    clock.now += 0.2
    revision = registry.revision()
    await b.tick()
    assert registry.revision() == revision  # no server write: the split is already there
    record = commands.read(registry, "chat")
    assert record.holder == "b"
    assert record.step == 1
    assert traffic(registry)[1] == {"revision": "v2", "percent": 50}
    for _ in range(41):
        clock.now += 0.5
        await b.tick()
    record = commands.read(registry, "chat")
    assert record.state == "succeeded"
    assert traffic(registry) == [
        {"revision": "v1", "percent": 0},
        {"revision": "v2", "percent": 100},
    ]
    assert step_metric("chat") == 0
    registry.close()


async def test_a_row_that_is_not_a_record_is_a_problem_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    registry = SqliteRegistry(f"sqlite://{tmp_path / 'r.db'}")
    registry.put_server(
        name="chat",
        hostnames=["chat.local"],
        protocol="http",
        spec={"traffic": [{"revision": "v1", "percent": 100}]},
    )
    for revision in ("v1", "v2"):
        registry.register_replica(
            server="chat", address=f"127.0.0.1:{9000 + int(revision[1])}", region="r",
            revision=revision,
        )  # fmt: skip
    registry.start_rollout(server="aaa", body='{"target": "v2", "steps": "lots"}', now=0)
    registry.start_rollout(server="bbb", body="x" * 20_000, now=0)
    clock = Clock(registry.read_state().committed_at + 1.0)
    commands.start(
        registry, server="chat", target="v2", steps=[100], interval="1s", max_error_rate="1%",
        min_requests=1, now=clock.now,
    )  # fmt: skip
    driver = RolloutDriver(registry=registry, holder="a", rates=lambda _: {}, clock=clock)
    await driver.tick()
    assert {(p.server, p.field) for p in driver.problems} == {("aaa", "steps"), ("bbb", "body")}
    assert traffic(registry) == [
        {"revision": "v1", "percent": 0},
        {"revision": "v2", "percent": 100},
    ]
    assert step_metric("aaa") is None
    registry.close()


async def test_a_split_the_registry_refuses_stops_the_rollout_naming_why(tmp_path: Path) -> None:
    """Another writer's server row the registry would refuse (a hostname that is not one):
    the split cannot be written, so the rollout stops and says so, instead of failing at every
    look."""
    path = tmp_path / "r.db"
    registry = SqliteRegistry(f"sqlite://{path}")
    registry.put_server(
        name="chat",
        hostnames=["chat.local"],
        protocol="http",
        spec={"traffic": [{"revision": "v1", "percent": 100}]},
    )
    for revision in ("v1", "v2"):
        registry.register_replica(
            server="chat", address=f"127.0.0.1:{9000 + int(revision[1])}", region="r",
            revision=revision,
        )  # fmt: skip
    clock = Clock(registry.read_state().committed_at + 1.0)
    commands.start(
        registry, server="chat", target="v2", steps=[100], interval="1s", max_error_rate="1%",
        min_requests=1, now=clock.now,
    )  # fmt: skip
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE servers SET hostnames = '[\"NOT A HOST\"]' WHERE name = 'chat'")
    db.close()
    driver = RolloutDriver(registry=registry, holder="a", rates=lambda _: {}, clock=clock)
    await driver.tick()
    record = commands.read(registry, "chat")
    assert record.state == "stopped"
    assert "the split cannot be written" in record.verdict
    assert "hostname" in record.verdict
    registry.close()
