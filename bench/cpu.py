"""CPU time of a process, in nanoseconds: the scheduler's own account, not clock ticks.

``/proc/PID/stat`` counts CPU in 10 ms ticks, so an idle process measured over seconds is a
handful of ticks (3 against 2 reads as "0.67x"). ``/proc/PID/task/TID/schedstat`` holds each
thread's time on the CPU in nanoseconds; :func:`cpu_seconds` sums it over every thread of the
process and, with ``children``, of its descendants (a supervisor's workers, an emulator's
gateway). A thread that exits inside a window takes its time with it, so windows are taken
over steady processes (idle, or serving streams), as every benchmark here does.
"""

from __future__ import annotations

from pathlib import Path


def _tasks(pid: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []


def _thread_ns(task: Path) -> int:
    try:
        return int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # the thread ended between the listing and the read


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in _tasks(parent):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            pending.extend(children)
    return found


def cpu_ns(pid: int, *, children: bool = False) -> int:
    """CPU time of every thread of ``pid`` (and of its descendants with ``children``), ns."""
    pids = [pid, *(descendants(pid) if children else ())]
    return sum(_thread_ns(task) for p in pids for task in _tasks(p))


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    return cpu_ns(pid, children=children) / 1e9
