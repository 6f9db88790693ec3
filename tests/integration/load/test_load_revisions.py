"""Load by replica and by revision, known load -> known answer (issue 26): a real Envoy reports
per endpoint over LRS; ``routeplane load --json`` must show each replica's requests in flight,
requests per second and errors per second as they were sent, and the same summed by revision.

The server hashes on a header, so each replica gets exactly the requests sent for it: replica
``a`` (v1) holds N requests open, ``b`` (v1) answers a steady rate, ``c`` (v2) answers a steady
rate of which one in four is a 500 (``?status=500``). Outlier detection is off (five 500s in a
row would eject ``c``) and retries are 0 (a retry would add requests nobody sent).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy, metric_sum
from harness.waiting import wait_until
from tests.integration.load.test_load import load_rows

pytestmark = pytest.mark.envoy
INTERVAL = 1.0  # a whole second a report: ~10 errors per report, not ~2
HELD = 3  # requests held open on replica a
HOLD_MS = 45_000  # past the wait for the known answer (30 s), within Envoy's request timeout
RATE_B = 20.0  # requests per second to replica b
RATE_C = 40.0  # requests per second to replica c, one in four a 500


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    control_plane = ControlPlane.create(tmp_path, extra=["--load-report-interval", str(INTERVAL)])
    control_plane.start()
    try:
        control_plane.wait_ready()
        yield control_plane
    finally:
        control_plane.stop()


def get(envoy: Envoy, path: str, *, key: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET through ``envoy`` for echo, hashed on ``x-user: key``: (status, replica name)."""
    request = urllib.request.Request(
        f"http://{envoy.listen}{path}", headers={"Host": "echo.local", "x-user": key}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()
    except OSError as exc:
        return 0, str(exc)


def keys_for(envoy: Envoy, names: set[str]) -> dict[str, str]:
    """A header value that the hash sends to each of ``names``."""
    found: dict[str, str] = {}
    for number in range(2000):
        key = f"user-{number}"
        status, name = get(envoy, "/", key=key)
        if status == 200 and name in names and name not in found:
            found[name] = key
            if len(found) == len(names):
                return found
    raise AssertionError(f"no key found for every replica: {found}")


class Paced:
    """Sends GETs for one key at ``rate`` a second from a thread, counting what was sent and
    the 500s answered (with when), until stopped."""

    def __init__(self, envoy: Envoy, *, key: str, rate: float, fail_every: int = 0) -> None:
        self.envoy, self.key, self.rate, self.fail_every = envoy, key, rate, fail_every
        self.sent: list[float] = []
        self.failed: list[float] = []
        self.other: list[tuple[int, str]] = []  # answers that were not what was asked
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            pause = started + len(self.sent) / self.rate - time.monotonic()
            if pause > 0:
                self.stop.wait(pause)  # pacing the load, not synchronisation
            fail = self.fail_every and len(self.sent) % self.fail_every == 0
            status, name = get(self.envoy, "/?status=500" if fail else "/", key=self.key)
            now = time.monotonic()
            self.sent.append(now)
            if status == 500:
                self.failed.append(now)
            if status != (500 if fail else 200):
                self.other.append((status, name))

    def achieved(self, seconds: float = 3.0) -> tuple[float, float]:
        """Requests and 500s per second over the last ``seconds``."""
        now = time.monotonic()
        recent = sum(1 for at in self.sent if now - at <= seconds)
        failed = sum(1 for at in self.failed if now - at <= seconds)
        return recent / seconds, failed / seconds


def near(reported: float, sent: float, share: float) -> bool:
    return abs(reported - sent) <= share * sent


def test_each_replicas_in_flight_requests_and_errors_and_their_sums_by_revision(
    cp: ControlPlane, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    registry = open_registry(cp.registry)
    registry.put_server(
        name="echo",
        hostnames=["echo.local"],
        protocol="http",
        spec={
            "load_balancing": {"consistent_hash": {"header": "x-user"}},
            "outlier_detection": "off",
            "retries": 0,
            # Both revisions take traffic (without a split, 100% would go to latest, v2); the
            # split hashes the same header, so each key still reaches one replica.
            "traffic": [{"revision": "v1", "percent": 50}, {"revision": "v2", "percent": 50}],
        },
    )
    ids: dict[str, str] = {}
    for name, revision in (("a", "v1"), ("b", "v1"), ("c", "v2")):
        replica = registry.register_replica(
            server="echo", address=echo_factory(name).address, region="us-west", revision=revision
        )
        ids[name] = replica.id
    registry.close()
    envoy = Envoy.create(tmp_path, node_id="edge-rev", region="us-west", xds=[cp.xds])
    held: list[threading.Thread] = []
    senders: list[Paced] = []
    try:
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: get(envoy, "/", key="probe")[0] == 200, what="routing", interval=0.1)
        # All three replicas are in the hash ring before keys are picked.
        wait_until(
            lambda: {get(envoy, "/", key=f"k{i}")[1] for i in range(60)} == {"a", "b", "c"},
            what="every replica routed",
        )
        keys = keys_for(envoy, {"a", "b", "c"})
        held = [
            threading.Thread(
                target=get,
                args=(envoy, f"/slow?ms={HOLD_MS}"),
                kwargs={"key": keys["a"], "timeout": 60},
            )
            for _ in range(HELD)
        ]
        for thread in held:
            thread.start()
        senders = [
            Paced(envoy, key=keys["b"], rate=RATE_B),
            Paced(envoy, key=keys["c"], rate=RATE_C, fail_every=4),
        ]
        for sender in senders:
            sender.thread.start()
        b, c = senders
        seen: list[dict[str, Any]] = []

        def known() -> dict[str, Any] | None:
            totals = [
                r for r in load_rows(cp.admin) if r["server"] == "echo" and r["region"] == "*"
            ]
            if not totals:
                return None  # no report from the Envoy yet
            [total] = totals
            seen.append(total)
            by_id = {r["replica"]: r for r in total["replicas"]}
            a_row, b_row, c_row = (by_id.get(ids[n]) for n in ("a", "b", "c"))
            if a_row is None or b_row is None or c_row is None:
                return None
            b_rate, _ = b.achieved()
            c_rate, c_errors = c.achieved()
            fits = (
                a_row["in_flight"] == HELD  # exact: a gets only the held requests
                and a_row["requests_per_second"] == 0
                and a_row["errors_per_second"] == 0
                and near(b_row["requests_per_second"], b_rate, 0.15)
                and b_row["errors_per_second"] == 0  # b never answered a 500
                and near(c_row["requests_per_second"], c_rate, 0.15)
                and near(c_row["errors_per_second"], c_errors, 0.3)
                and near(total["errors_per_second"], c_errors, 0.3)
            )
            return total if fits else None

        # Three reports in a row must fit (one could by chance).
        fitting: list[dict[str, Any]] = []

        def steady() -> bool:
            found = known()
            fitting[:] = [*fitting, found] if found is not None else []
            return len(fitting) >= 3

        try:
            wait_until(steady, timeout=30, interval=INTERVAL, what="the known load reported")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last rows: {seen[-3:]}") from None
        assert not b.other, b.other[:3]
        assert not c.other, c.other[:3]
        assert c.failed, "c answered no 500"
        total = fitting[-1]
        revisions = {r["replica"]: r["revision"] for r in total["replicas"]}
        assert revisions == {ids["a"]: "v1", ids["b"]: "v1", ids["c"]: "v2"}
        by_revision = {r["revision"]: r for r in total["revisions"]}
        assert set(by_revision) == {"v1", "v2"}
        v1, v2 = by_revision["v1"], by_revision["v2"]
        by_id = {r["replica"]: r for r in total["replicas"]}
        assert v1["ready_replicas"] == 2
        assert v2["ready_replicas"] == 1
        assert v1["in_flight"] == HELD + by_id[ids["b"]]["in_flight"]
        assert v1["errors_per_second"] == 0
        assert v1["requests_per_second"] == pytest.approx(
            by_id[ids["b"]]["requests_per_second"], abs=1e-3
        )
        assert v2["requests_per_second"] == by_id[ids["c"]]["requests_per_second"]
        assert v2["errors_per_second"] == by_id[ids["c"]]["errors_per_second"]
        assert metric_sum(cp.admin, "routeplane_revision_errors_per_second", revision="v2") > 0
        assert metric_sum(cp.admin, "routeplane_revision_errors_per_second", revision="v1") == 0
    finally:
        for sender in senders:
            sender.stop.set()
        for sender in senders:
            sender.thread.join(timeout=10)
        envoy.stop()
        for thread in held:
            thread.join(timeout=60)
