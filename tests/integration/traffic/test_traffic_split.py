"""Known answers for traffic splits and tags (issue 26), through a real Envoy.

Real echo replicas answer their own name, and each name says its revision (``chat-v2-a``), so
every response says which revision served it. The split is written with ``servers apply`` as a
user would; replicas carry their revision through the registry's ``register_replica``.
Convergence is waited for on Envoy's own config dump (the route's clusters and weights), never
by sleeping.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import Registry, open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, routeplane
from harness.waiting import wait_until

pytestmark = pytest.mark.envoy
HOST = "chat.local"
REVISION_HEADER = "x-routeplane-revision"


@pytest.fixture
def registry(control_plane: ControlPlane) -> Iterator[Registry]:
    reg = open_registry(control_plane.registry)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def envoy(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Envoy]:
    proxy = Envoy.create(tmp_path, node_id="edge", region="us-west", xds=[control_plane.xds])
    proxy.start()
    try:
        proxy.wait_live()
        yield proxy
    finally:
        proxy.stop()


def apply(control_plane: ControlPlane, tmp_path: Path, **spec: Any) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text(yaml.safe_dump({"servers": [{"name": "chat", "hostnames": [HOST], **spec}]}))
    routeplane("servers", "apply", "-f", str(path), registry=control_plane.registry)


def start_replica(
    registry: Registry, echo_factory: Callable[[str], EchoThread], name: str, revision: str
) -> str:
    echo = echo_factory(name)
    replica = registry.register_replica(
        server="chat", address=echo.address, region="us-west", revision=revision
    )
    return replica.id


def ask(
    envoy: Envoy, count: int, *, host: str = HOST, headers: dict[str, str] | None = None
) -> Counter[str]:
    """``count`` requests on one kept-alive connection: who answered each (or its status)."""
    address, port = envoy.listen.rsplit(":", 1)
    connection = http.client.HTTPConnection(address, int(port), timeout=10)
    answers: Counter[str] = Counter()
    try:
        for _ in range(count):
            connection.request("GET", "/", headers={"Host": host, **(headers or {})})
            response = connection.getresponse()
            body = response.read().decode().strip()
            answers[body if response.status == 200 else f"status {response.status}"] += 1
    finally:
        connection.close()
    return answers


def route_action(envoy: Envoy, route: str) -> dict[str, Any]:
    """The action of the route named ``route`` in Envoy's config dump ({} if absent)."""
    dump = json.loads(envoy.admin_get("/config_dump?resource=dynamic_route_configs"))
    for config in dump.get("configs", []):
        for host in config.get("route_config", {}).get("virtual_hosts", []):
            for found in host.get("routes", []):
                if found.get("name") == route:
                    return dict(found.get("route", {}))
    return {}


def reported_problems(control_plane: ControlPlane) -> list[dict[str, str]]:
    """What ``routeplane problems --json`` says about the running control plane."""
    done = subprocess.run(
        [ROUTEPLANE, "problems", "--admin", control_plane.admin, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return list(json.loads(done.stdout))


def weights(envoy: Envoy, route: str = "default_chat/default") -> dict[str, int]:
    action = route_action(envoy, route)
    if "cluster" in action:
        return {action["cluster"]: 100}
    clusters = action.get("weighted_clusters", {}).get("clusters", [])
    return {c["name"]: int(c.get("weight", 0)) for c in clusters}


def test_a_90_10_split_lands_10_percent_on_v2_and_tags_reach_their_revision_at_0_percent(
    control_plane: ControlPlane,
    envoy: Envoy,
    registry: Registry,
    echo_factory: Callable[[str], EchoThread],
    tmp_path: Path,
) -> None:
    apply(
        control_plane,
        tmp_path,
        traffic=[
            {"revision": "v1", "percent": 90, "tag": "stable"},
            {"revision": "v2", "percent": 10, "tag": "canary"},
            {"revision": "latest", "percent": 0, "tag": "next"},
        ],
    )
    start_replica(registry, echo_factory, "chat-v1-a", "v1")
    start_replica(registry, echo_factory, "chat-v2-a", "v2")
    start_replica(registry, echo_factory, "chat-v3-a", "v3")  # the latest: at 0%, tagged next
    wait_until(
        lambda: weights(envoy) == {"default_chat_rev_v1": 90, "default_chat_rev_v2": 10},
        timeout=30,
        what="Envoy's route to split 90/10",
    )
    # Every revision's endpoints are in Envoy: each tag is answered by its revision.
    for tag, name in (("stable", "chat-v1-a"), ("canary", "chat-v2-a"), ("next", "chat-v3-a")):
        wait_until(
            lambda tag=tag, name=name: ask(envoy, 1, headers={REVISION_HEADER: tag}) == {name: 1},
            timeout=30,
            what=f"tag {tag} answered by {name}",
        )

    answers = ask(envoy, 2000)
    assert set(answers) <= {"chat-v1-a", "chat-v2-a"}, answers  # no error, nothing to v3
    assert sum(answers.values()) == 2000
    assert 160 <= answers["chat-v2-a"] <= 240, answers  # 10% +/- 2%

    # Tags bypass the split, at 0% too: the header form, and the hostname form.
    assert ask(envoy, 50, headers={REVISION_HEADER: "next"}) == {"chat-v3-a": 50}
    assert ask(envoy, 50, headers={REVISION_HEADER: "canary"}) == {"chat-v2-a": 50}
    assert ask(envoy, 50, host="next--chat.local") == {"chat-v3-a": 50}
    assert ask(envoy, 50, host="canary--chat.local") == {"chat-v2-a": 50}
    # An unknown tag is no tag: the request takes the split.
    assert set(ask(envoy, 20, headers={REVISION_HEADER: "nope"})) <= {"chat-v1-a", "chat-v2-a"}


def test_with_affinity_a_session_stays_on_one_revision_and_sessions_spread_over_both(
    control_plane: ControlPlane,
    envoy: Envoy,
    registry: Registry,
    echo_factory: Callable[[str], EchoThread],
    tmp_path: Path,
) -> None:
    apply(
        control_plane,
        tmp_path,
        load_balancing={"consistent_hash": {"header": "x-session"}},
        traffic=[
            {"revision": "v1", "percent": 50, "tag": "one"},
            {"revision": "v2", "percent": 50, "tag": "two"},
        ],
    )
    start_replica(registry, echo_factory, "chat-v1-a", "v1")
    start_replica(registry, echo_factory, "chat-v2-a", "v2")
    wait_until(
        lambda: (
            route_action(envoy, "default_chat/default")
            .get("weighted_clusters", {})
            .get("use_hash_policy")
        ),
        timeout=30,
        what="Envoy's split to follow the hash",
    )
    for tag, name in (("one", "chat-v1-a"), ("two", "chat-v2-a")):
        wait_until(
            lambda tag=tag, name=name: ask(envoy, 1, headers={REVISION_HEADER: tag}) == {name: 1},
            timeout=30,
            what=f"{name} in Envoy",
        )

    session = ask(envoy, 200, headers={"x-session": "session-0"})
    assert len(session) == 1, session
    assert next(iter(session)) in {"chat-v1-a", "chat-v2-a"}, session
    seen: Counter[str] = Counter()
    for i in range(1, 41):
        answers = ask(envoy, 3, headers={"x-session": f"session-{i}"})
        assert len(answers) == 1, (i, answers)  # each session on one revision
        seen.update(answers)
    assert set(seen) == {"chat-v1-a", "chat-v2-a"}, seen


def test_a_revision_with_no_ready_replica_gets_nothing_and_the_problem_is_reported(
    control_plane: ControlPlane,
    envoy: Envoy,
    registry: Registry,
    echo_factory: Callable[[str], EchoThread],
    tmp_path: Path,
) -> None:
    apply(
        control_plane,
        tmp_path,
        traffic=[
            {"revision": "v1", "percent": 50},
            {"revision": "v2", "percent": 40, "tag": "canary"},
            {"revision": "v9", "percent": 10},  # no replica carries it at all
        ],
    )
    start_replica(registry, echo_factory, "chat-v1-a", "v1")
    v2 = start_replica(registry, echo_factory, "chat-v2-a", "v2")
    wait_until(
        lambda: weights(envoy) == {"default_chat_rev_v1": 56, "default_chat_rev_v2": 44},
        timeout=30,
        what="v9's 10% shared by v1 and v2 (50:40)",
    )
    routeplane("replicas", "drain", v2, registry=control_plane.registry)
    wait_until(
        lambda: weights(envoy) == {"default_chat_rev_v1": 100},
        timeout=30,
        what="everything to v1 once v2 has no READY replica",
    )
    wait_until(lambda: ask(envoy, 1) == {"chat-v1-a": 1}, timeout=30, what="chat-v1-a in Envoy")
    assert ask(envoy, 200) == {"chat-v1-a": 200}
    problems = reported_problems(control_plane)
    fields = {(p["name"], p["field"], p["value"]) for p in problems}
    assert ("chat", "spec.traffic[1].revision", "v2") in fields, problems
    assert ("chat", "spec.traffic[2].revision", "v9") in fields, problems
    # Its tag still names it: its cluster has no READY replica, so Envoy answers 503.
    assert ask(envoy, 5, headers={REVISION_HEADER: "canary"}) == {"status 503": 5}
