"""When a recommendation has settled, so that an idle view need not update it again. Pure.
Imports only the autoscaling rule and its spec value.

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

from control_plane.load.autoscale import raw_desired
from control_plane.registry.spec import Autoscaling


def settled(desired: int, *, in_flight: float, wake: bool, spec: Autoscaling) -> bool:
    """Whether a key that was just updated with ``in_flight`` and ``wake`` and got ``desired``
    keeps ``desired`` for as long as it has no load and no wake."""
    return in_flight <= 0 and not wake and desired == raw_desired(0.0, spec)
