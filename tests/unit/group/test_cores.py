"""``--workers 0``: one worker per core this process may use, a container's CPU limit included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from control_plane.group.cores import auto_workers, available_cores, worker_count


def limited(root: Path, cores: float) -> Path:
    """A cgroup tree that limits to ``cores`` in both layouts (v2 ``cpu.max``, v1 ``cpu.cfs_*``),
    whichever this machine's ``/proc/self/cgroup`` names."""
    period = 100_000
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(f"{int(cores * period)} {period}\n")
    for v1 in ("cpu", "cpu,cpuacct"):
        (root / v1).mkdir(exist_ok=True)
        (root / v1 / "cpu.cfs_quota_us").write_text(f"{int(cores * period)}\n")
        (root / v1 / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def test_a_cpu_limit_caps_the_worker_count_rounded_up(tmp_path: Path) -> None:
    assert available_cores(limited(tmp_path / "half", 0.5)) == 1
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(limited(tmp_path / "plenty", affinity + 8)) == affinity
    if affinity >= 2:
        assert available_cores(limited(tmp_path / "one-and-a-half", 1.5)) == 2


def test_no_limit_means_every_core_of_the_affinity(tmp_path: Path) -> None:
    unlimited = tmp_path / "none"
    unlimited.mkdir()
    (unlimited / "cpu.max").write_text("max 100000\n")
    assert available_cores(unlimited) == len(os.sched_getaffinity(0))
    assert available_cores(tmp_path / "missing") == len(os.sched_getaffinity(0))


def test_workers_0_follows_the_available_cores() -> None:
    assert worker_count(0) == auto_workers(available_cores())
    assert worker_count(3) == 3


@pytest.mark.parametrize(
    ("cores", "workers"), [(1, 1), (2, 1), (3, 1), (4, 4), (8, 8), (64, 64)], ids=str
)
def test_workers_0_runs_one_process_below_4_cores_and_one_per_core_from_4(
    cores: int, workers: int
) -> None:
    assert auto_workers(cores) == workers
