"""What an idle load view may skip: recommendations that have settled, and servers that did
not change (``ChangeLog``, so watchers are sent only those that did). Pure. Imports only the
autoscaling rule and its spec value.

A key (server, region) has *settled* when its last update had no load and no wake and the
recommendation it got is the rule's value for no load, ``raw_desired(0)``. Why updating it again
with no load returns the same value at any later time (``load/autoscale.py``):

- ``raw_desired(0)`` is the lowest raw value the rule gives (it grows with the load; a wake only
  raises it), and the newest history entry is that value;
- up: the lowest raw value in the scale-up window includes that newest entry, so it is at most
  the recommendation: no move up;
- down: the highest raw value in the scale-down window includes it too, so it is at least the
  recommendation: no move down.

Updates that are skipped would each add that same value: the entry in force does not change,
so skipping them changes nothing. Load, a wake or a new rule (a new table) brings the key back.
"""

from __future__ import annotations

from collections import deque

from control_plane.load.autoscale import raw_desired
from control_plane.registry.spec import Autoscaling


def settled(
    desired: int,
    *,
    in_flight: float,
    wake: bool,
    spec: Autoscaling,
    utilization: float | None = None,
    ready: int = 0,
) -> bool:
    """Whether a key that was just updated with ``in_flight`` and ``wake`` and got ``desired``
    keeps ``desired`` for as long as it has no load and no wake. Under a utilization rule:
    no utilization reported, whose raw value is ``ready`` (constant until a new table, which
    brings the key back), by the same argument."""
    if spec.target_utilization > 0 and not spec.target_concurrency > 0:
        return (
            utilization is None
            and not wake
            and desired == raw_desired(0.0, spec, utilization=None, ready=ready)
        )
    return in_flight <= 0 and not wake and desired == raw_desired(0.0, spec)


class ChangeLog:
    """The servers whose rows changed in each of the last ``kept`` versions of a view."""

    def __init__(self, kept: int = 64) -> None:
        self.version = 0
        self._log: deque[tuple[int, frozenset[str]]] = deque(maxlen=kept)

    def add(self, changed: frozenset[str]) -> None:
        """A new version, in which ``changed`` changed (or went)."""
        self.version += 1
        self._log.append((self.version, changed))

    def since(self, version: int) -> frozenset[str] | None:
        """The servers that changed after ``version``; None when that is too far back (or
        not a version of this log) to tell."""
        if version == self.version:
            return frozenset()
        if not 0 <= version < self.version or not self._log or self._log[0][0] > version + 1:
            return None
        return frozenset().union(*(servers for at, servers in self._log if at > version))
