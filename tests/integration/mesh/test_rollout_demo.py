"""The guide's rollout section, run as typed against `routeplane mesh up --detach` with traffic
flowing through the us-west Envoy: chat moves from v1 to v2 step by step with no failed
request, a v3 that fails 20% of its requests is rolled back by itself with a verdict naming the
rates, and `servers rollback` answers at once. Its `--status` output is printed (run with -s).

Each command line of the section runs as the guide prints it (its environment prefix and its
arguments; `.venv/bin/routeplane` is this environment's), a line ending in `&` as a process of
this test, stopped by PID at the end (the sample replicas deregister). Beside the guide's
traffic (a `curl` at 100 requests a second, run as typed) this test's own slower stream records
every answer.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from control_plane.dev.mesh import ROLLOUT_ERROR_PERCENT
from control_plane.dev.processes import load_state
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE
from harness.waiting import wait_until
from tests.meshes import MeshPorts, free_mesh_ports

pytestmark = pytest.mark.envoy

HOST = "chat.local"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[Path, MeshPorts, str]]:
    """A detached mesh (the Spanner emulator when installed, as a user gets it) and its guide."""
    workdir = tmp_path / "mesh"
    last = ""
    for _ in range(5):
        ports = free_mesh_ports()
        result = subprocess.run(
            [ROUTEPLANE, "mesh", "up", "--detach", "--workdir", str(workdir), *ports.args()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode == 0:
            break
        last = result.stderr
        assert "already in use" in last, last
    else:
        pytest.fail(f"no free port range: {last}")
    try:
        yield workdir, ports, result.stdout
    finally:
        for log in sorted((workdir / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- {log.name} (last {len(tail)} lines)", *tail, sep="\n")
        subprocess.run(
            [ROUTEPLANE, "mesh", "down", "--workdir", str(workdir)],
            capture_output=True,
            timeout=90,
            check=False,
        )


@dataclass(frozen=True, slots=True)
class Typed:
    """One command line of the guide: its environment prefix, its words, backgrounded or not."""

    line: str
    env: dict[str, str]
    argv: list[str]
    background: bool


def rollout_section(guide: str) -> list[Typed]:
    lines = guide.split("Roll out (", 1)[1].split("Break things:", 1)[0].splitlines()
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + line
        elif line.startswith("  ") and not line.startswith("  ("):
            joined.append(line.strip())
    typed = []
    for line in joined:
        words = shlex.split(line, comments=True)
        background = words[-1] == "&"
        words = words[:-1] if background else words
        env = {}
        while re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        typed.append(Typed(line=line, env=env, argv=words, background=background))
    return typed


@dataclass
class Stream:
    """A steady stream of GETs to chat through one Envoy (two keep-alive clients, each paced
    at ~25 a second: a load generator's pace, not synchronisation); every answer recorded."""

    port: int
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/", headers={"Host": HOST})
                response = conn.getresponse()
                answer = (time.monotonic(), response.status, response.read().decode().strip())
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                answer = (time.monotonic(), 0, repr(exc))
            self.answers.append(answer)
            self.stop.wait(0.04)

    def since(self, start: float) -> list[tuple[float, int, str]]:
        return [a for a in list(self.answers) if a[0] >= start]

    def last(self, count: int) -> list[str]:
        return [body for _, _, body in list(self.answers)[-count:]]

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def test_the_guides_rollout_moves_chat_to_v2_and_v3_rolls_itself_back(
    mesh: tuple[Path, MeshPorts, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workdir, ports, guide = mesh
    west = ports.west
    section = rollout_section(guide)
    started: list[subprocess.Popen[bytes]] = []

    def run(typed: Typed, *, timeout: float = 60) -> str:
        assert typed.argv[0] == ".venv/bin/routeplane", typed.line
        argv = [ROUTEPLANE, *typed.argv[1:]]
        env = {**os.environ, **typed.env}
        if typed.background:
            log = (workdir / "logs" / f"typed-{len(started)}.log").open("w")
            started.append(
                subprocess.Popen(
                    argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
            return ""
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, f"{typed.line}\n{done.stdout}{done.stderr[-2000:]}"
        return done.stdout

    def named(*words: str) -> Typed:
        matches = [t for t in section if all(w in t.argv for w in words)]
        assert matches, f"no line of the guide's rollout section has {words}"
        return matches[0]

    traffic = next(t for t in section if t.argv[0] == "curl" and t.background)
    assert f"Host: {HOST}" in traffic.line
    assert f"http://127.0.0.1:{west}/" in traffic.line
    watch_line = next(t for t in section if t.argv[0] == "for")

    def status() -> str:
        return run(named("rollout", "--status"))

    state = load_state(workdir)
    assert state is not None
    for key, value in state.env.items():
        monkeypatch.setenv(key, value)

    def succeeded() -> str:
        text = status()
        return text if "succeeded" in text else ""

    def rolled_back() -> str:
        text = status()
        return text if "rolled back" in text.lower() else ""

    def ready(revision: str) -> None:
        registry = open_registry(state.registry_url)
        try:
            wait_until(
                lambda: any(
                    r.revision == revision and r.state == "READY"
                    for r in registry.list_replicas("chat")
                ),
                timeout=30,
                interval=0.1,
                what=f"a READY replica of {revision}",
            )
        finally:
            registry.close()

    stream = Stream(west)
    stream.start()
    try:
        # The guide's traffic, as typed (its redirection included): one process of this test.
        typed_traffic = traffic.line.removesuffix("&").strip()
        started.append(subprocess.Popen(["bash", "-c", f"exec {typed_traffic}"]))
        wait_until(
            lambda: stream.last(10) == ["chat-us-west-1@v1"] * 10, timeout=30, what="v1 answering"
        )

        # v2 next to v1, then the rollout; answers move, step by step, with no failure.
        run(named("replica", "--revision", "v2"))
        ready("v2")
        assert all(body.endswith("@v1") for body in stream.last(20))  # 0% until the rollout
        rollout_at = time.monotonic()
        run(named("rollout", "--to", "v2"))
        watched = subprocess.run(
            ["bash", "-c", watch_line.line], capture_output=True, text=True, timeout=60
        )
        print(f"$ {watch_line.line}\n{watched.stdout}")
        assert set(watched.stdout.split()) <= {"chat-us-west-1@v1", "chat-us-west-2@v2"}
        wait_until(
            lambda: stream.last(40) == ["chat-us-west-2@v2"] * 40,
            timeout=90,
            interval=0.2,
            what="every answer from v2",
        )
        moved = stream.since(rollout_at)
        assert {status for _, status, _ in moved} == {200}, "a request failed during the rollout"
        first_v2 = next(i for i, a in enumerate(moved) if a[2].endswith("@v2"))
        assert any(a[2].endswith("@v1") for a in moved[first_v2:]), "not step by step"
        shown = wait_until(
            succeeded, timeout=30, interval=0.5, what="v2's rollout to say it succeeded"
        )
        print(f"$ {named('rollout', '--status').line}\n{shown}")
        assert "v2" in shown

        # v3 fails 20% of its requests: rolled back by itself, the verdict naming the rates.
        run(named("replica", "--revision", "v3"))
        ready("v3")
        v3_at = time.monotonic()
        run(named("rollout", "--to", "v3"))
        verdict = wait_until(
            rolled_back,
            timeout=120,
            interval=1,
            what="v3's rollout rolled back by itself",
        )
        with capsys.disabled():
            print(f"\n$ {named('rollout', '--status').line}\n{verdict}")
        # The verdict itself (not the split lines around it) names both revisions' rates.
        said = next(line for line in verdict.splitlines() if "rolled back" in line.lower())
        assert "v3" in said
        rates = re.findall(r"(\d+(?:\.\d+)?)%", said)
        assert any(abs(float(rate) - ROLLOUT_ERROR_PERCENT) <= 5 for rate in rates), (
            f"v3's error rate is not named: {said}"
        )
        assert any(float(rate) == 0 for rate in rates), f"v2's error rate is not named: {said}"
        wait_until(
            lambda: stream.last(40) == ["chat-us-west-2@v2"] * 40,
            timeout=30,
            interval=0.2,
            what="traffic back on v2",
        )
        after = stream.since(v3_at)
        assert any(body == "chat-us-west-3@v3" for _, _, body in after), "v3 never took traffic"
        failed = [(s, b) for _, s, b in after if s != 200]
        assert failed, "v3 failed no request"
        assert set(failed) == {(500, "chat-us-west-3@v3 error")}, "a request to v2 failed"

        # By hand: back to the last split that completed (v2), at once.
        back = run(named("servers", "rollback"))
        print(f"$ {named('servers', 'rollback').line}\n{back}")
        rolled = time.monotonic()
        wait_until(lambda: len(stream.since(rolled)) >= 40, timeout=30, what="40 more answers")
        assert {b for _, _, b in stream.since(rolled)} == {"chat-us-west-2@v2"}
    finally:
        stream.close()
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
