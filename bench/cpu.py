"""CPU time of a process, in nanoseconds where the kernel keeps them, not in clock ticks.

``/proc/PID/stat`` counts CPU in 10 ms ticks, so an idle process measured over seconds is a
handful of ticks (3 against 2 reads as "0.67x"). ``/proc/PID/task/TID/schedstat`` holds each
live thread's time on the CPU in nanoseconds; :func:`cpu_ns` sums it over every thread of the
process and, with ``children``, of its descendants (a supervisor's workers, an emulator's
helpers). A thread that has ended takes its schedstat with it, though, and a process that
starts threads as it goes (the Spanner emulator does) would then lose time, even show less CPU
at the end of a window than at its start. So the time of ended threads is added from the
process's own counters (which keep it, in ticks): the process's ticks less its live threads'.
For a process whose threads live through the window (``serve``, its workers, Envoy) the figure
is exact to the nanosecond; for one that churns threads, the churned part is at tick
resolution, which is the best /proc offers.
"""

from __future__ import annotations

import os
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


def _ticks(stat: Path) -> int:
    """utime + stime of a /proc .../stat file, in clock ticks (0 if it is gone)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _process_ns(pid: int) -> int:
    """Live threads from schedstat (ns) + ended threads from the process's ticks."""
    tasks = _tasks(pid)
    live_ns = sum(_thread_ns(task) for task in tasks)
    live_ticks = sum(_ticks(task / "stat") for task in tasks)
    ended_ticks = max(0, _ticks(Path(f"/proc/{pid}/stat")) - live_ticks)
    return live_ns + ended_ticks * TICK_NS


def cpu_ns(pid: int, *, children: bool = False) -> int:
    """CPU time of ``pid`` (and of its descendants with ``children``), ns."""
    pids = [pid, *(descendants(pid) if children else ())]
    return sum(_process_ns(p) for p in pids)


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    return cpu_ns(pid, children=children) / 1e9
