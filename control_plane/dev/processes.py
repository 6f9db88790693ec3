"""The demo mesh's processes: each started in its own session with its log file, recorded in
``mesh.json`` (the state ``mesh down`` and ``mesh status`` read from another shell), checked by
PID and command line (a reused PID is not ours) and stopped by PID: SIGTERM, then SIGKILL after a
grace. Dev tooling: the product never imports it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(slots=True)
class Started:
    name: str
    pid: int
    program: str
    log: str


@dataclass(slots=True)
class MeshState:
    registry_url: str
    processes: list[Started] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def state_path(workdir: Path) -> Path:
    return workdir / "mesh.json"


def save(workdir: Path, state: MeshState) -> None:
    state_path(workdir).write_text(json.dumps(asdict(state), indent=2) + "\n")


def load_state(workdir: Path) -> MeshState | None:
    path = state_path(workdir)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return MeshState(
        registry_url=raw["registry_url"],
        processes=[Started(**p) for p in raw["processes"]],
        env=raw.get("env", {}),
    )


def start(state: MeshState, workdir: Path, name: str, argv: list[str]) -> None:
    log_path = workdir / "logs" / f"{name}.log"
    # Unbuffered: a log line is in the log file when it happens, not when the process exits.
    env = {**os.environ, **state.env, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches `mesh up` only; it stops the rest in order
        )
    state.processes.append(Started(name=name, pid=process.pid, program=argv[0], log=str(log_path)))
    save(workdir, state)


def runs(started: Started) -> bool:
    """Is that PID still the process we started (not a reused PID, not a zombie)?"""
    try:
        raw = Path(f"/proc/{started.pid}/cmdline").read_bytes()
        state = Path(f"/proc/{started.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        return False
    if not raw:
        return True  # mid-exec (Envoy's launcher execs the binary): cmdline is briefly empty
    return started.program.encode() in raw.split(b"\0")[:2]


def stop(processes: list[Started], *, grace: float = 10.0) -> None:
    """SIGTERM to all of ``processes`` at once; SIGKILL to any still running after ``grace``."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        wait_gone(process, deadline)
        if runs(process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            wait_gone(process, time.monotonic() + 5)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)  # reaped if it was ours (the foreground up)


def wait_gone(process: Started, deadline: float) -> None:
    while runs(process) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(process.pid, os.WNOHANG)
        time.sleep(0.02)


def still_up(workdir: Path) -> bool:
    state = load_state(workdir)
    return state is not None and any(runs(p) for p in state.processes)


def status(workdir: Path) -> list[tuple[str, int, bool]]:
    state = load_state(workdir)
    if state is None:
        return []
    return [(p.name, p.pid, runs(p)) for p in state.processes]
