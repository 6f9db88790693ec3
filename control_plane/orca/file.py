"""A load report kept in a file of ``METRIC=VALUE`` lines (what ``--report-file`` reads): a
callable that re-reads the file when it changes, at most every ``check_every`` seconds.

Stdlib only; imports nothing from ``control_plane`` but ``control_plane.orca``; never logs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Final

from control_plane.orca import LoadReport, parse_assignments

MAX_FILE_BYTES: Final = 64 * 1024


class ReportFile:
    """``ReportFile(path)()`` -> the file's report, or None when it is missing, empty or holds
    only blank and ``#`` lines ("report nothing"). The file is read again when its size,
    mtime or inode change, checked at most every ``check_every`` seconds (0.1) so a busy
    server does not stat it per request. A file that does not parse (or is over 64 KiB) raises
    ValueError naming the file and line; the caller (``orca.Reporter``) counts it and sends
    nothing until the file is fixed. Thread safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_every: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self.check_every = check_every
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = -float("inf")
        self._seen: tuple[int, int, int] | None = None
        self._report: LoadReport | None = None
        self._error = ""

    def __call__(self) -> LoadReport | None:
        with self._lock:
            now = self._clock()
            if now - self._checked >= self.check_every:
                self._checked = now
                self._refresh()
            if self._error:
                raise ValueError(self._error)
            return self._report

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._report, self._error = None, None, ""
            return
        except OSError as exc:
            self._seen, self._report, self._error = None, None, f"{self.path}: {exc}"
            return
        seen = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if seen == self._seen:
            return
        self._seen = seen
        self._report, self._error = None, ""
        try:
            self._report = read_report(self.path)
        except (OSError, ValueError) as exc:
            self._error = str(exc)


def read_report(path: str) -> LoadReport | None:
    """Parse a report file now (see ``ReportFile``); None for a missing or empty file."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: over {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 ({exc})") from None
    lines = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not lines:
        return None
    for number, line in lines:
        try:
            parse_assignments([line])
        except ValueError as exc:
            raise ValueError(f"{path} line {number}: {exc}") from None
    try:
        return parse_assignments(line for _, line in lines)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
