"""Linux inotify through libc (ctypes, no dependency): a hint that named files in one directory
were written, for the SQLite watch to look at once instead of at its next poll.

An event is only a hint: the watch's own probe decides whether anything committed. One
non-blocking, close-on-exec descriptor per :class:`DirectoryWatch`, one watch on it, released
with the descriptor by :meth:`DirectoryWatch.close`. :meth:`DirectoryWatch.open` returns None
wherever inotify cannot be had (not Linux, no libc symbol, the per-user instance or watch limit
reached, a path that is not a directory); callers then poll.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import struct
import sys
from collections.abc import Iterable

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ_SIZE = 64 * 1024
# Reads per drain: a flood of events in the directory is taken in bounded bites (the loop calls
# the reader again while more is queued).
_MAX_READS = 16


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_init1.restype = ctypes.c_int
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_add_watch.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


class DirectoryWatch:
    """Events in one directory that name one of ``names`` (or say the queue overflowed)."""

    def __init__(self, fd: int, names: Iterable[str]) -> None:
        self._fd = fd
        self._names = frozenset(os.fsencode(n) for n in names)

    @classmethod
    def open(cls, directory: str, names: Iterable[str]) -> DirectoryWatch | None:
        libc = _libc()
        if libc is None:
            return None
        fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            return None  # EMFILE: the user's inotify instances are all taken
        if libc.inotify_add_watch(fd, os.fsencode(directory), MASK) < 0:
            os.close(fd)
            return None
        return cls(fd, names)

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> bool:
        """Read what is queued (never blocks); True when an event concerns our files."""
        hit = False
        for _ in range(_MAX_READS):
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                return True  # cannot tell: let the probe decide
            offset = 0
            while offset + _HEADER.size <= len(data):
                _, mask, _, length = _HEADER.unpack_from(data, offset)
                start = offset + _HEADER.size
                name = data[start : start + length].rstrip(b"\0")
                offset = start + length
                if mask & IN_Q_OVERFLOW or name in self._names:
                    hit = True
            if len(data) < _READ_SIZE // 2:
                break  # took all that was queued
        return hit

    def close(self) -> None:
        """Release the descriptor and its watch; twice is harmless."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
