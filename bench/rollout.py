"""A rollback, as a user types it (issue 26): ``routeplane servers rollback`` -> the last request
answered by the bad revision.

Starts a control plane (SQLite registry), a real Envoy and two echo replicas on loopback, one
server ``chat`` with revisions ``v1`` (good) and ``v3`` (bad), its spec at 100% on v1. Two
keep-alive clients send a steady stream of GETs through Envoy and record when each answer came
and which revision gave it. Each try starts a rollout to v3 with the CLI (``servers rollout chat
--to v3 --steps 50,100 --interval 600s``: the first step holds), waits for v3's answers, then runs
``servers rollback chat`` and takes the time from the command's start to the last answer v3
gave (the stream runs on until 100 answers in a row and one second have come from v1 alone).
The command's own run time (a Python process starting, its registry writes) is reported beside
it, and the time from the commit of its split (the registry's own timestamp) to that last
answer: the control plane and Envoy's part (an answer already on its way counts; it can be
below 0). The first try warms up and is not counted. Prints a
table and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.probe import summary
from bench.propagation import RESULTS, commit_time, git_revision
from bench.stats import tail, tails_name
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy
from harness.waiting import wait_until

HOST = "chat.local"
GOOD, BAD = "v1", "v3"
QUIET_ANSWERS = 100  # answers in a row from the good revision that end a try...
QUIET_SECONDS = 1.0  # ...over at least this long


class Stream:
    """Two keep-alive clients GETting through Envoy back to back; every answer kept as
    (wall time, status, body)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.answers: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                conn.request("GET", "/", headers={"Host": HOST})
                response = conn.getresponse()
                body = response.read().decode().strip()
                self.answers.append((time.time(), response.status, body))
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                self.answers.append((time.time(), 0, ""))
            self.stop.wait(0.004)  # a client's pace (~200/s each at most), not synchronisation

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def _cli(*args: str, registry: str) -> float:
    """Run ``routeplane ARGS --registry URL``; its wall-clock start."""
    started = time.time()
    done = subprocess.run(
        [ROUTEPLANE, *args, "--registry", registry],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"routeplane {' '.join(args)}: {done.stdout}{done.stderr[-2000:]}")
    return started


def run(workdir: Path, *, tries: int) -> dict[str, Any]:
    """``tries`` rollbacks (plus one to warm up) against one control plane and one Envoy."""
    cp = ControlPlane.create(workdir)
    cp.start()
    envoy = None
    stream = None
    replicas = {rev: EchoThread(name=f"chat-{rev}") for rev in (GOOD, BAD)}
    try:
        cp.wait_ready()
        envoy = Envoy.create(workdir, node_id="bench-rollout", region="us-west", xds=[cp.xds])
        envoy.start()
        envoy.wait_live()
        registry = open_registry(cp.registry)
        registry.put_server(
            name="chat",
            hostnames=[HOST],
            protocol="http",
            spec={"traffic": [{"revision": GOOD, "percent": 100}]},
        )
        for revision, replica in replicas.items():
            registry.register_replica(
                server="chat", address=replica.address, region="us-west", revision=revision
            )
        registry.close()
        stream = Stream(envoy.listen)
        stream.start()
        good, bad = f"chat-{GOOD}", f"chat-{BAD}"
        wait_until(
            lambda: _last(stream) == good,
            timeout=30,
            what=f"{GOOD} in service",
        )
        rollback: list[float] = []
        command: list[float] = []
        from_commit: list[float] = []
        failed = 0
        for attempt in range(tries + 1):
            seen = len(stream.answers)
            _cli(
                "servers",
                "rollout",
                "chat",
                "--to",
                BAD,
                "--steps",
                "50,100",
                "--interval",
                "600s",
                registry=cp.registry,
            )
            wait_until(
                lambda: any(a[2] == bad for a in stream.answers[seen:]),  # noqa: B023
                timeout=30,
                interval=0.005,
                what=f"{BAD} answering",
            )
            mark = len(stream.answers)
            started = _cli("servers", "rollback", "chat", registry=cp.registry)
            returned = time.time()

            def quiet() -> bool:
                answers = stream.answers[mark:]  # noqa: B023
                for run, (when, _, body) in enumerate(reversed(answers), start=1):
                    if body != good:
                        return False
                    if run >= QUIET_ANSWERS and time.time() - when >= QUIET_SECONDS:
                        return True
                return False

            wait_until(quiet, timeout=60, interval=0.05, what=f"{BAD} gone after the rollback")
            answers = stream.answers[seen:]
            failed += sum(1 for _, status, _ in answers if status != 200)
            last_bad = max(when for when, _, body in answers if body == bad)
            committed = commit_time(cp.registry)  # the rollback's split, the newest write
            if attempt:
                rollback.append((last_bad - started) * 1000)
                command.append((returned - started) * 1000)
                if started <= committed <= returned:
                    from_commit.append((last_bad - committed) * 1000)
        return {
            "tries": tries,
            "rollback_to_last_bad": summary(rollback),
            "command": summary(command),
            # Tries whose newest commit was the rollback's own (no later write came first).
            **({"commit_to_last_bad": summary(from_commit)} if from_commit else {}),
            "failed_requests": failed,
            "answers": len(stream.answers),
        }
    finally:
        if stream is not None:
            stream.close()
        if envoy is not None:
            envoy.stop()
        cp.stop()
        for replica in replicas.values():
            replica.stop()


def _last(stream: Stream | None) -> str:
    return stream.answers[-1][2] if stream is not None and stream.answers else ""


def table(row: dict[str, Any]) -> list[str]:
    rows = [
        ("rollback -> last bad answer", row["rollback_to_last_bad"]),
        ("the command itself", row["command"]),
    ]
    if "commit_to_last_bad" in row:
        rows.append(("its split's commit -> last bad answer", row["commit_to_last_bad"]))
    measured = [s for _, s in rows]
    last = tails_name(measured)
    lines = [
        "",
        "A rollback (`routeplane serve`, SQLite, 1 Envoy, a steady stream of GETs through it): "
        "`routeplane servers rollback` started -> the last request answered by the bad revision "
        "(a rollout to it held at 50%); the command's own run (a Python process, its registry "
        "writes) and the time from its split's commit (the registry's timestamp) beside it; "
        f"N = {row['tries']} tries, ms; failed requests: "
        f"{row['failed_requests']} of {row['answers']}",
        "",
        f"| measured | N | p50 | p90 | {last} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in rows:
        lines.append(f"| {name} | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {tail(s)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        row = run(Path(tmp), tries=args.tries)
    print("\n".join(table(row)))
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "rollout", "git_revision": git_revision(), "result": row}
    path = RESULTS / "rollout.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
