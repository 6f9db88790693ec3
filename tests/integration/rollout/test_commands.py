"""The rollout commands against a real ``serve`` (no proxy: no load, so no step is judged):
a manual ``servers apply`` stops a running rollout and wins, ``servers rollback`` writes the
split before it back and stops it, and a rollout row that is not a record is a problem naming
the field while the other rollouts go on."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from control_plane.registry.spec import decode
from harness.processes import ROUTEPLANE, ControlPlane, routeplane
from harness.waiting import wait_until
from tests.integration.rollout.traffic import HOST, admin_rollouts, status


@pytest.fixture
def control_plane(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    # --workers 1 (one process, no supervisor) unless a test asks for more: under a supervisor
    # its driver answers for the group.
    workers = str(getattr(request, "param", 1))
    cp = ControlPlane.create(tmp_path, extra=["--workers", workers])
    cp.start()
    try:
        cp.wait_ready()
        yield cp
    finally:
        cp.stop()


def apply(url: str, tmp_path: Path, traffic: list[dict[str, Any]] | None) -> None:
    server: dict[str, Any] = {"name": "chat", "hostnames": [HOST]}
    if traffic is not None:
        server["traffic"] = traffic
    path = tmp_path / "servers.yaml"
    path.write_text(yaml.safe_dump({"servers": [server]}))
    routeplane("servers", "apply", "-f", str(path), registry=url)


def traffic_of(url: str) -> list[dict[str, Any]]:
    registry = open_registry(url)
    try:
        [server] = [s for s in registry.list_servers() if s.name == "chat"]
    finally:
        registry.close()
    return list(decode(server.spec).get("traffic", []))


def started(url: str) -> dict[str, Any]:
    return wait_until(
        lambda: (lambda r: r if r["written"] else None)(status(url)),
        timeout=30,
        what="the first split written",
    )


@pytest.fixture
def replicas(
    control_plane: ControlPlane, echo_factory: Callable[[str], EchoThread]
) -> Callable[[], None]:
    return lambda: register(control_plane, echo_factory)


def register(control_plane: ControlPlane, echo_factory: Callable[[str], EchoThread]) -> None:
    registry = open_registry(control_plane.registry)
    try:
        for name, revision in (("chat-v1-a", "v1"), ("chat-v2-a", "v2")):
            registry.register_replica(
                server="chat",
                address=echo_factory(name).address,
                region="us-west",
                revision=revision,
            )
    finally:
        registry.close()


def test_a_manual_apply_stops_the_rollout_and_its_split_stays(
    control_plane: ControlPlane, replicas: Callable[[], None], tmp_path: Path
) -> None:
    url = control_plane.registry
    # The default split (100% latest, here v2): the rollout starts from v1, latest's other.
    apply(url, tmp_path, None)
    replicas()
    routeplane("servers", "rollout", "chat", "--to", "v2", "--interval", "60s", registry=url)
    record = started(url)
    assert record["before"] == []
    assert record["base"] == [{"revision": "v1", "percent": 100, "tag": ""}]
    assert traffic_of(url) == [{"revision": "v1", "percent": 95}, {"revision": "v2", "percent": 5}]
    again = routeplane("servers", "rollout", "chat", "--to", "v2", registry=url, check=False)
    assert again.returncode == 1
    assert "has a rollout running" in again.stderr
    mine = [{"revision": "v1", "percent": 70}, {"revision": "v2", "percent": 30}]
    apply(url, tmp_path, mine)
    record = wait_until(
        lambda: (lambda r: r if r["state"] != "running" else None)(status(url)),
        timeout=30,
        what="the rollout to stop",
    )
    assert record["state"] == "stopped"
    assert "changed by another write" in record["verdict"]
    assert traffic_of(url) == mine  # the later write wins; the rollout wrote nothing more


def test_rollback_writes_the_split_before_and_stops_the_rollout(
    control_plane: ControlPlane, replicas: Callable[[], None], tmp_path: Path
) -> None:
    url = control_plane.registry
    apply(url, tmp_path, [{"revision": "v1", "percent": 100, "tag": "stable"}])
    replicas()
    routeplane("servers", "rollout", "chat", "--to", "v2", "--steps", "50,100", registry=url)
    started(url)
    assert traffic_of(url) == [
        {"revision": "v1", "percent": 50, "tag": "stable"},
        {"revision": "v2", "percent": 50},
    ]
    done = routeplane("servers", "rollback", "chat", registry=url)
    assert "rolled back chat: traffic v1 100%; rollout stopped" in done.stdout
    assert traffic_of(url) == [{"revision": "v1", "percent": 100, "tag": "stable"}]
    record = status(url)
    assert record["state"] == "stopped"
    assert record["verdict"] == "rolled back by command at step 1 of 2 (50%)"
    text = routeplane("servers", "rollout", "chat", "--status", registry=url).stdout
    assert "rollout of chat to v2: stopped, step 1 of 2 (50%)" in text
    assert "verdict: rolled back by command" in text
    again = routeplane("servers", "rollback", "chat", registry=url)
    assert "already has the split before its rollout" in again.stdout
    # The admin API answers from the driver's last look at the records.
    [found] = wait_until(
        lambda: [r for r in admin_rollouts(control_plane.admin, "chat") if r.state == "stopped"],
        timeout=30,
        what="GetRollouts to show the stopped rollout",
    )
    assert (found.target, found.step, list(found.steps)) == ("v2", 1, [50, 100])
    assert found.verdict == "rolled back by command at step 1 of 2 (50%)"
    assert [(s.revision, s.percent, s.tag) for s in found.base] == [("v1", 100, "stable")]
    assert admin_rollouts(control_plane.admin, "nope") == []


@pytest.mark.parametrize("control_plane", [1, 2], indirect=True, ids=["lone", "workers"])
def test_a_rollout_row_that_is_not_a_record_is_a_problem_and_the_others_go_on(
    control_plane: ControlPlane, replicas: Callable[[], None], tmp_path: Path
) -> None:
    url = control_plane.registry
    apply(url, tmp_path, [{"revision": "v1", "percent": 100}])
    replicas()
    db = sqlite3.connect(url.removeprefix("sqlite://"), timeout=10)
    try:
        with db:
            db.execute(
                "INSERT INTO rollouts VALUES ('ghost', 'running', '', 0, 0, ?)",
                (json.dumps({"target": "V2!", "steps": [100]}),),
            )
            db.execute(
                "INSERT INTO rollouts VALUES ('blob', 'running', '', 0, 0, ?)", (b"\x00" * 10,)
            )
    finally:
        db.close()
    routeplane("servers", "rollout", "chat", "--to", "v2", registry=url)
    started(url)

    def problems() -> list[dict[str, str]]:
        import subprocess

        done = subprocess.run(
            [ROUTEPLANE, "problems", "--admin", control_plane.admin, "--json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return [p for p in json.loads(done.stdout) if p.get("kind") == "rollout"]

    found = wait_until(lambda: len(problems()) == 2 and problems(), timeout=30, what="problems")
    assert {(p["name"], p["field"]) for p in found} == {("ghost", "target"), ("blob", "body")}
    bad = routeplane("servers", "rollout", "ghost", "--status", registry=url, check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: invalid rollout.target")
