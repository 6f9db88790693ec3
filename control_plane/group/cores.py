"""Core counting for ``serve --workers``: how many workers a group runs (``--workers 0``: one
per core this process may use, a container's CPU limit included, when that is at least
``GROUP_FROM_CORES``; else one process).

Measured on a 2-core VM, one worker per core (2) against one: with 10 Envoys on the same cores
(``bench/workers_default.py``) a group was not reliably faster (0.69-1.08x the commit -> last
Envoy p50 over three runs), cost 1.2-1.5x the CPU per change and 3.1x the memory; with 1,000
simulated streams and nothing else on the host (``bench/workers.py``) it was 0.82x at the
median, for 1.1x the CPU and 2.4x the memory. Below 4 cores the default is the one process;
a group pays for itself when its workers each have a core to spare (README, "The default").
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from control_plane.app import ConfigError

MAX_WORKERS = 256
# ``--workers 0`` runs one worker per core from this many cores up, and one process below.
GROUP_FROM_CORES = 4


def worker_count(workers: int, *, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """``--workers`` -> the processes to run (0: one per available core from
    ``GROUP_FROM_CORES`` cores up, else 1); ConfigError naming the flag and value when out of
    range."""
    if not 0 <= workers <= MAX_WORKERS:
        raise ConfigError(f"invalid --workers {workers!r}: expected 0 (automatic) to {MAX_WORKERS}")
    return workers or auto_workers(available_cores(cgroup_root))


def auto_workers(cores: int) -> int:
    """What ``--workers 0`` runs on ``cores`` available cores."""
    return cores if cores >= GROUP_FROM_CORES else 1


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use, for ``--workers 0``: its CPU affinity, capped by a cgroup
    CPU quota (a container's CPU limit, rounded up), at least 1. ``os.cpu_count()`` alone would
    start one worker per core of the host in a container limited to one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """The tightest CPU quota (in cores) over this process's cgroup and its ancestors; None if
    there is none or it cannot be read. cgroup v2 (``cpu.max``), else v1 (``cpu.cfs_*``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and not controllers:  # v2: "0::/path"
            directory = root / path.lstrip("/")
            while True:
                with contextlib.suppress(OSError, ValueError):
                    limit, period = (directory / "cpu.max").read_text().split()[:2]
                    if limit != "max":
                        quotas.append(int(limit) / int(period))
                if directory == root or root not in directory.parents:
                    break
                directory = directory.parent
        elif "cpu" in controllers.split(","):  # v1
            mounts = (root / "cpu", root / "cpu,cpuacct")
            for base in [m / path.lstrip("/") for m in mounts] + list(mounts):
                with contextlib.suppress(OSError, ValueError):
                    limit_us = int((base / "cpu.cfs_quota_us").read_text())
                    period_us = int((base / "cpu.cfs_period_us").read_text())
                    if limit_us > 0 and period_us > 0:
                        quotas.append(limit_us / period_us)
                    break
    return min(quotas) if quotas else None
