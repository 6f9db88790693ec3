"""Starting and stopping the local mesh as a user does: `make run` in a terminal, Ctrl-C,
`timeout make run` (SIGTERM to the whole process group), `mesh down` from another terminal, and
`mesh up` again at once on the same ports."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.mesh import REPLICAS, port_free
from harness.processes import ROUTEPLANE, http_get
from harness.waiting import wait_until
from tests.meshes import foreground_mesh, gone, start_foreground, wait_all_gone

pytestmark = pytest.mark.envoy
EVERYTHING_GONE = 15.0  # seconds: the bound for Ctrl-C


def _echo(port: int) -> tuple[int, str]:
    return http_get(f"http://127.0.0.1:{port}/", host="echo.local")


def _report(what: str, sent: float, exited: dict[str, float], output: str) -> None:
    """What a reader of `pytest -s` sees: the order things went in, and mesh up's last line."""
    order = sorted(exited, key=lambda name: exited[name])
    print(f"\n{what} to the process group; gone, in order (s after the signal):")
    for name in order:
        print(f"  {exited[name] - sent:5.2f}  {name}")
    print(f"mesh up printed: {output.rstrip().splitlines()[-1]!r}")


def _events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines in ``path`` (its processes share the file: lines written at once may
    share a line, and one cut by another's write is left out)."""
    events = []
    for line in path.read_text().replace("}{", "}\n{").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and "event" in event:
                events.append(event)
    return events


def test_a_port_in_time_wait_is_free_and_a_listening_port_is_not() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free(port)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.recv(1)
        client.close()
    # The listener is gone; only the connection in TIME_WAIT holds the port.
    assert port_free(port)


def test_ctrl_c_stops_the_whole_mesh_mesh_down_ends_the_foreground_up_and_it_restarts_at_once(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "mesh"
    with foreground_mesh(workdir) as first:
        ports = first.ports
        assert _echo(ports.west)[0] == 200
        # `mesh down` from another terminal: the foreground `mesh up` notices and returns.
        down = subprocess.run(
            [ROUTEPLANE, "mesh", "down", "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        )
        print(down.stdout)
        assert first.process.wait(timeout=EVERYTHING_GONE) == 0
        assert "stopped from elsewhere" in first.text()

    # At once, on the same ports (their connections of a moment ago are in TIME_WAIT).
    again = start_foreground(workdir, ports, name="again")
    try:
        pids = again.wait_up()
        assert _echo(ports.west)[0] == 200
        pids["mesh up"] = again.process.pid
        sent = time.monotonic()
        again.signal_group(signal.SIGINT)  # Ctrl-C in the terminal: the foreground group
        exited = wait_all_gone(pids, timeout=EVERYTHING_GONE)
        assert again.process.wait(timeout=5) == 0
        _report("SIGINT", sent, exited, again.text())
        assert again.text().rstrip().endswith(f"stopped {len(pids) - 1} processes")
    finally:
        again.stop()


def test_sigterm_to_the_process_group_deregisters_every_replica_before_the_registry_stops(
    tmp_path: Path, spanner_emulator: object
) -> None:
    # The mesh starts its own emulator; the session's fixture only proves one is installed.
    workdir = tmp_path / "mesh"
    with foreground_mesh(workdir, registry="spanner") as mesh:
        pids = mesh.wait_up()
        assert "spanner-emulator" in pids
        pids["mesh up"] = mesh.process.pid
        sent = time.monotonic()
        mesh.signal_group(signal.SIGTERM)  # what `timeout make run` does
        exited = wait_all_gone(pids, timeout=EVERYTHING_GONE)
        _report("SIGTERM", sent, exited, mesh.text())
        # The order is judged from the logs, not from when this test's polling saw each PID
        # gone (one sweep sees several at once: a tie would pass in either order).
        # Each replica's deregistration is a write the registry accepted: the emulator was up.
        # Its log ends with that line, so the log's mtime is when it was written.
        deregistered: dict[str, float] = {}
        for replica in REPLICAS:
            path = workdir / "logs" / f"{replica.name}.log"
            log = path.read_text()
            assert "Traceback" not in log, log
            last = log.rstrip().splitlines()[-1] if log.strip() else ""
            assert last.startswith(f"{replica.name}: deregistered"), f"{replica.name}:\n{log}"
            deregistered[replica.name] = path.stat().st_mtime
        # The control plane began its shutdown after the last of them, and the registry
        # answered its watch until then (no registry_degraded).
        control_plane = _events(workdir / "logs" / "control-plane.log")
        shutdown_at = min(
            dt.datetime.fromisoformat(e["timestamp"]).timestamp()
            for e in control_plane
            if e["event"] == "shutdown_started"  # the supervisor's and each worker's
        )
        last_name = max(deregistered, key=lambda name: deregistered[name])
        assert shutdown_at > deregistered[last_name], f"{last_name} deregistered after it"
        assert not [e for e in control_plane if e["event"] == "registry_degraded"]
        wait_until(lambda: gone(mesh.process.pid), timeout=5, what="mesh up itself")
