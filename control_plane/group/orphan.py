"""How a child of the supervisor (a worker, the registry watcher) learns that the supervisor
died: on Linux the kernel signals it at once (``PR_SET_PDEATHSIG``); elsewhere it asks every
``ORPHAN_CHECK_SECONDS``. Standard library only, so the watcher stays a small process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys

ORPHAN_CHECK_SECONDS = 1.0  # where the kernel cannot tell a child its supervisor died
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def ask_for_parent_death_signal() -> bool:
    """Have the kernel send SIGUSR1 when the supervisor dies (Linux); whether it will."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
